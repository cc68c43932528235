"""Schemathesis hooks for `tests/system/test_fuzz.py` (loaded with SCHEMATHESIS_HOOKS).

- The contract allows either credential; schemathesis fills both security schemes at once,
  which this service rejects by design (401: both headers could name different organizations).
  ORBIT_FUZZ_CREDENTIAL keeps only the credential under test.
- ORBIT_FUZZ_EXPORTS (JSON list of [id, runId, exportId]) points half of the generated cases at
  real exports, so the 200 and 409 bodies are checked too, not only 404s.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import schemathesis

_OTHER_HEADER = {"api_key": "Authorization", "jwt": "X-API-Key"}
_EXPORTS: list[list[str]] = json.loads(os.environ.get("ORBIT_FUZZ_EXPORTS", "[]"))
_RANDOM = random.Random(7)


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    other = _OTHER_HEADER.get(os.environ.get("ORBIT_FUZZ_CREDENTIAL", ""))
    if other and case.headers:
        case.headers.pop(other, None)
    if _EXPORTS and case.path_parameters and _RANDOM.random() < 0.5:
        audience, run, export = _RANDOM.choice(_EXPORTS)
        case.path_parameters.update({"id": audience, "runId": run, "exportId": export})
