"""What FastAPI itself costs per request for the shapes the export route could take, measured
in-process (the ASGI app called directly: no server, no socket, no database), the variants
interleaved in rounds so the machine's drift hits them alike. `python bench/framework_costs.py`
(part of `make bench`); docs/performance.md quotes it.

- `bare`: a route without parameters returning a prepared `Response`;
- `three_uuids`: + three typed path parameters (the floor's shape);
- `+dependency`: + one `Depends` that reads the request (the service's `CurrentPrincipal`);
- `+response_model`: the endpoint returns a pydantic model that FastAPI validates and dumps;
- `+model_as_response`: the same model dumped by the endpoint and returned as a `Response`;
- `one_path_dependency`: the three ids parsed by one dependency instead of typed parameters.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from harness import SMOKE
from pydantic import BaseModel

PATH = "/v1/intent/audiences/{id}/runs/{runId}/exports/{exportId}"
BODY = b'{"data": {}}'
# A few requests in smoke mode (SMOKE=1): does it still run.
ROUNDS, REQUESTS = (1, 50) if SMOKE else (7, 3000)


class Export(BaseModel):
    id: uuid.UUID
    status: str
    byte_size: int


async def caller(request: Request) -> object:
    return request.scope["state"]["auth"]


async def path_ids(request: Request) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    params = request.path_params
    return uuid.UUID(params["id"]), uuid.UUID(params["runId"]), uuid.UUID(params["exportId"])


def _json() -> Response:
    return Response(BODY, media_type="application/json")


def variants() -> dict[str, FastAPI]:
    apps: dict[str, FastAPI] = {}

    def app(name: str, route: Callable[..., Any], **options: Any) -> None:
        apps[name] = FastAPI()
        apps[name].get(PATH, **options)(route)

    async def bare(request: Request) -> Response:
        return _json()

    async def three_uuids(id: uuid.UUID, runId: uuid.UUID, exportId: uuid.UUID) -> Response:
        return _json()

    async def with_dependency(
        principal: Annotated[object, Depends(caller)],
        id: uuid.UUID,
        runId: uuid.UUID,
        exportId: uuid.UUID,
    ) -> Response:
        return _json()

    async def with_model(id: uuid.UUID, runId: uuid.UUID, exportId: uuid.UUID) -> Export:
        return Export(id=exportId, status="completed", byte_size=1)

    async def model_as_response(
        id: uuid.UUID,
        runId: uuid.UUID,
        exportId: uuid.UUID,
    ) -> Response:
        body = Export(id=exportId, status="completed", byte_size=1).model_dump_json()
        return Response(body, media_type="application/json")

    async def one_path_dependency(
        ids: Annotated[tuple[uuid.UUID, uuid.UUID, uuid.UUID], Depends(path_ids)],
    ) -> Response:
        return _json()

    app("bare", bare)
    app("three_uuids", three_uuids)
    app("three_uuids+dependency", with_dependency)
    app("three_uuids+response_model", with_model, response_model=Export)
    app("three_uuids+model_as_response", model_as_response, response_model=Export)
    app("one_path_dependency", one_path_dependency)
    return apps


async def measure(apps: dict[str, FastAPI]) -> dict[str, float]:
    path = PATH.format(id=uuid.uuid4(), runId=uuid.uuid4(), exportId=uuid.uuid4())

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80), "state": {"auth": object()},
        }  # fmt: skip

    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(ROUNDS):
        for name, app in apps.items():
            started = time.process_time()
            for _ in range(REQUESTS):
                await app(scope(), receive, send)
            samples[name].append((time.process_time() - started) / REQUESTS * 1e6)
    # The fastest round: the least disturbed by anything else on the machine.
    return {name: round(min(values), 1) for name, values in samples.items()}


def main() -> None:
    print(json.dumps({"us_per_request": asyncio.run(measure(variants()))}))


if __name__ == "__main__":
    main()
