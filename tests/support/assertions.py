"""Assertions several test modules share."""

from __future__ import annotations

import httpx


def assert_unauthorized(response: httpx.Response, *, mentions: str | None = None) -> None:
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "UNAUTHORIZED"
    if mentions:
        assert mentions in error["message"]


def assert_storage_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    assert int(response.headers["Retry-After"]) > 0
