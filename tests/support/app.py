"""An app built in this process, with its real lifespan, behind an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx

from app.core.settings import Settings
from app.main import create_app
from tests.support.contract import validate_response_hook
from tests.support.secrets import IN_PROCESS_APPS

MakeSettings = Callable[..., Settings]


@asynccontextmanager
async def serve(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its real lifespan, behind an httpx client that checks every response.

    Starlette re-raises an unhandled exception after sending the 500; pass
    `raise_app_exceptions=False` to receive that 500 instead."""
    app = create_app(settings)
    IN_PROCESS_APPS["started"] += 1
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions),
            base_url="http://orbit.test",
            event_hooks={"response": [validate_response_hook]},
        ) as client,
    ):
        yield client


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def download(url: str, **kwargs: object) -> httpx.Response:
    """Fetch a signed URL from the emulator, as a browser or script holding it would."""
    async with httpx.AsyncClient() as plain:
        return await plain.get(url, **kwargs)  # type: ignore[arg-type]
