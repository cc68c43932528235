"""The b2sdk private hooks of app/storage/b2_compat.py: pinned to the b2sdk line they were read
from, and present with the signatures they override. Their behaviour is tested through the
emulator (capped retries: tests/api/test_metrics.py; one shared re-authorization:
tests/storage/test_b2_faults.py; b2ContentDisposition: every signed-URL download)."""

from __future__ import annotations

import inspect

from b2sdk.v2 import B2Http, B2RawHTTPApi, B2Session

from app.storage import b2_compat


def test_b2sdk_is_the_line_the_hooks_were_written_for() -> None:
    assert b2_compat.installed_b2sdk_line() == b2_compat.WRITTEN_FOR, (
        "b2sdk was upgraded: re-read every hook in app/storage/b2_compat.py against the new"
        " release, then update WRITTEN_FOR and the pin in pyproject.toml"
    )


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_overridden_and_called_private_methods_exist_with_their_signatures() -> None:
    assert parameters(B2Http._translate_and_retry) == ["fcn", "try_count", "post_params"]
    assert parameters(B2Http._translate_errors) == ["fcn", "post_params"]
    assert parameters(B2Session._api_token_callback)[:2] == ["self", "raw_api_method"]
    assert parameters(B2Session.authorize_automatically) == ["self"]
    assert parameters(B2Session._wrap_default_token)[:2] == ["self", "raw_api_method"]
    assert parameters(B2RawHTTPApi._post_json)[:4] == ["self", "base_url", "endpoint", "auth"]


def test_the_api_uses_the_bounded_session_and_http() -> None:
    assert b2_compat.BoundedB2Api.SESSION_CLASS is b2_compat._SharedReauthSession
    assert b2_compat._SharedReauthSession.B2HTTP_CLASS is b2_compat._BoundedB2Http
    assert b2_compat.MAX_TRIES == 2
