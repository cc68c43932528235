"""Process lifetime on Linux: children that stop when the process that started them dies."""

from __future__ import annotations

import os
import signal
import sys

# Set by `orbit-exports serve` to its own pid before uvicorn starts the workers.
SUPERVISOR_PID_ENV = "ORBIT_SUPERVISOR_PID"
# prometheus-client's multiprocess folder, shared by the workers of one `orbit-exports serve`
# (app/cli/serve.py prepares it; app/core/metrics.py reads it).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, even by SIGKILL (elsewhere: no-op).
    Safe in a `preexec_fn`."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_with_supervisor() -> None:
    """In a worker that uvicorn started for `orbit-exports serve`: drain and stop (SIGTERM) if the
    supervisor is killed outright, instead of serving on as an orphan."""
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is None or not supervisor.isdigit() or int(supervisor) == os.getpid():
        return
    die_with_parent()
    if os.getppid() != int(supervisor):
        # The supervisor died before the line above took effect (this worker was still
        # starting): nobody would stop or replace it.
        os.kill(os.getpid(), signal.SIGTERM)
