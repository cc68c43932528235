"""uvicorn's private httptools protocol and worker supervisor as app/cli/uvicorn_compat.py
subclasses them: pinned to the uvicorn line they were read from, present with the methods it
overrides, and bounding header bytes on a real `orbit-exports serve` (whose default parser it
is)."""

from __future__ import annotations

import inspect
import socket

import httpx
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from app.cli import uvicorn_compat


def test_uvicorn_is_the_line_the_subclass_was_written_for() -> None:
    assert uvicorn_compat.installed_uvicorn_line() == uvicorn_compat.WRITTEN_FOR, (
        "uvicorn was upgraded: re-read HttpToolsProtocol against the new release, then update"
        " WRITTEN_FOR in app/cli/uvicorn_compat.py and the pin in pyproject.toml"
    )


def test_the_overridden_methods_exist_with_their_signatures() -> None:
    def parameters(name: str) -> list[str]:
        return list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters)

    assert parameters("connection_made") == ["self", "transport"]
    assert parameters("data_received") == ["self", "data"]
    assert parameters("on_headers_complete") == ["self"]
    assert parameters("on_message_complete") == ["self"]


def test_the_supervisor_parts_used_exist_with_their_signatures() -> None:
    """ReloadingMultiprocess overrides two methods of uvicorn's supervisor and reads its
    workers (`processes`: `pid`, `exitcode`, `is_ready`); the behaviour is tested in
    tests/system/test_rotation.py."""
    assert list(inspect.signature(Multiprocess.__init__).parameters) == [
        "self",
        "config",
        "sockets",
    ]
    assert list(inspect.signature(Multiprocess.handle_hup).parameters) == ["self"]
    assert list(inspect.signature(Multiprocess.keep_subprocess_alive).parameters) == ["self"]
    assert list(inspect.signature(Process.is_ready).parameters) == ["self", "timeout"]
    assert isinstance(Process.pid, property)
    assert isinstance(Process.exitcode, property)
    assert "self.processes: list[Process]" in inspect.getsource(Multiprocess.__init__)


def raw_request(url: str, header_bytes: int) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # refused before all of it was sent
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"content-length" in answer.lower():
                break
        return answer


def test_huge_headers_are_refused_while_being_read(live_server: str) -> None:
    """8 MB of header: uvicorn's own httptools protocol reads all of it; ours answers 431 in
    the envelope once MAX_HEADER_BYTES (16 kB) have arrived, and closes."""
    answer = raw_request(live_server, 8_000_000)
    if answer:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
        assert b'"code": "HEADERS_TOO_LARGE"' in answer


def test_headers_within_the_limit_and_keep_alive_still_work(live_server: str) -> None:
    with httpx.Client() as client:
        for _ in range(3):  # the count restarts with each request on the connection
            response = client.get(live_server + "/livez", headers={"X-Pad": "a" * 10_000})
            assert response.status_code == 200
