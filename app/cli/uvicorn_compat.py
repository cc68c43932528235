"""The one place that uses uvicorn's private API: its httptools protocol, with a bound on
header bytes, and its worker supervisor, which passes SIGHUP on to the workers.

uvicorn's httptools protocol (the fast parser, uvicorn's default when httptools is installed)
reads request headers of any size into memory: an 8 MB header was accepted. uvicorn's only
header limit, `h11_max_incomplete_event_size`, applies to its h11 parser, which costs this
service about a quarter of its throughput (docs/performance.md). This subclass counts the bytes
received while a request's headers are incomplete and answers 431 (the error envelope) and
closes the connection once MAX_HEADER_BYTES is passed, so at most MAX_HEADER_BYTES plus one read
(64 kB) is buffered per connection.

With several workers, uvicorn's supervisor (`uvicorn.supervisors.Multiprocess`) answers SIGHUP
by replacing every worker. A replaced worker closes its idle keep-alive connections, and a
client whose next request was already on its way gets no answer (one lost request in 2,166 in
`tests/system/test_rotation.py`); the replacement also took 3.7 s for two workers. Each worker
reloads its settings in place on SIGHUP (app/main.py), so this supervisor passes the signal on
instead: to each worker that has finished starting (its SIGHUP handler is installed by then),
and to a worker still starting once it has, so none is missed and none is killed by it.

It overrides `connection_made`, `data_received`, `on_headers_complete` and
`on_message_complete` of `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`, and
`handle_hup` and `keep_subprocess_alive` of `Multiprocess` (using its `processes`, and their
`pid`, `exitcode` and `is_ready`); `tests/cli/test_uvicorn_compat.py` pins the installed
uvicorn to `WRITTEN_FOR`, checks those parts' signatures and runs the protocol in a real server;
the supervisor's behaviour is tested on real servers in `tests/system/test_rotation.py`. An
upgrade fails loudly there rather than quietly in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import uuid
from datetime import UTC, datetime

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess

from app.api.envelope import REQUEST_ID_HEADER, STATIC_HEADERS
from app.core.settings import get_settings

_supervisor_log = logging.getLogger("uvicorn.error")

# The uvicorn minor line these overrides were read from (also pinned in pyproject.toml).
WRITTEN_FOR = "0.54"


def installed_uvicorn_line() -> str:
    major, minor, *_ = uvicorn.__version__.split(".")
    return f"{major}.{minor}"


def _headers_too_large() -> bytes:
    """The error envelope's 431, with the headers every answer of the service carries."""
    request_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "error": {
                "code": "HEADERS_TOO_LARGE",
                "message": "The request's headers are too large.",
                "details": None,
            },
            "meta": {
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "request_id": request_id,
            },
        }
    ).encode()
    headers = {
        **STATIC_HEADERS,
        REQUEST_ID_HEADER: request_id,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + head.encode() + b"\r\n" + body


class HeaderBoundedHttpToolsProtocol(HttpToolsProtocol):
    """`http=` for uvicorn.run: httptools with MAX_HEADER_BYTES enforced while reading."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._limit = get_settings().max_header_bytes
        # Bytes received since the current request began, while its headers are incomplete;
        # None while they are complete (the body is not counted).
        self._header_bytes: int | None = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._header_bytes is not None:
            self._header_bytes += len(data)
            if self._header_bytes > self._limit:
                self.transport.write(_headers_too_large())
                self.transport.close()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._header_bytes = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._header_bytes = 0
        super().on_message_complete()


class ReloadingMultiprocess(Multiprocess):
    """uvicorn's worker supervisor, except that SIGHUP reloads each worker's settings in place
    (the worker's own handler) rather than replacing the workers."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        # Workers a SIGHUP has yet to reach, by pid, and those told they are waited for.
        self._reload_pending: set[int] = set()
        self._reload_waiting: set[int] = set()

    def handle_hup(self) -> None:
        _supervisor_log.info(
            "Received SIGHUP, passing it on to the workers (each reloads its settings)."
        )
        # Passed on in this same pass of the loop, once keep_subprocess_alive has seen every
        # worker answer (so each is asked whether it is ready once, right after it answered).
        self._reload_pending = {p.pid for p in self.processes if p.pid is not None}

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._pass_on_sighup()

    def _pass_on_sighup(self) -> None:
        if self.should_exit.is_set():
            # Stopping: a worker past its lifespan has no SIGHUP handler any more.
            self._reload_pending.clear()
            return
        for process in self.processes:
            pid = process.pid
            if pid not in self._reload_pending or process.exitcode is not None:
                continue
            # Before it is ready a worker has no SIGHUP handler, and the signal would kill it.
            if not process.is_ready(timeout=self.config.timeout_worker_healthcheck):
                if pid not in self._reload_waiting:
                    self._reload_waiting.add(pid)
                    _supervisor_log.info("SIGHUP waits for worker [%d] to finish starting", pid)
                continue
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass  # it ended meanwhile; its replacement reads the settings afresh
            else:
                _supervisor_log.info("Passed SIGHUP on to worker [%d]", pid)
            self._reload_pending.discard(pid)
        # A worker that died meanwhile was replaced by one that read the settings afresh.
        alive = {p.pid for p in self.processes}
        self._reload_pending &= alive
        self._reload_waiting &= self._reload_pending


def run_workers(config: uvicorn.Config) -> None:
    """`uvicorn.run` for `config.workers` > 1, with the supervisor above."""
    sock = config.bind_socket()
    try:
        ReloadingMultiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
