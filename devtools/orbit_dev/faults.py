"""A TCP proxy for fault injection, for the tests and `make drill`: passes traffic, stalls it,
refuses or drops connections, or silences the connections it has (a NAT's idle timeout, a
failover: nothing passes any more and nothing is closed) while new ones pass."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from sqlalchemy.engine import URL, make_url

Mode = Literal["pass", "stall", "refuse"]


class TcpProxy:
    """Listens on 127.0.0.1 and forwards to a Postgres URL's server (TCP or Unix socket)."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream: URL = make_url(upstream_url)
        self.mode: Mode = "pass"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # The connections silenced by `silence_existing`, by their client-side writer.
        self._silenced: set[asyncio.StreamWriter] = set()
        self._connections: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.port = 0

    def url(self) -> str:
        """The upstream URL rewritten to go through this proxy."""
        via = self.upstream.set(host="127.0.0.1", port=self.port, query={})
        return via.render_as_string(hide_password=False)

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()

    def silence_existing(self) -> None:
        """Every connection open now stops passing anything, in either direction, without being
        closed; connections made afterwards pass as usual."""
        for client, upstream in self._connections:
            self._silenced |= {client, upstream}

    def drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.set_mode("pass")
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        socket_dir = self.upstream.query.get("host")
        port = self.upstream.port or 5432
        if socket_dir:
            return await asyncio.open_unix_connection(f"{socket_dir}/.s.PGSQL.{port}")
        return await asyncio.open_connection(self.upstream.host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await self._open_upstream()
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pair = (writer, up_writer)
        self._connections.append(pair)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._connections.remove(pair)
        for w in (writer, up_writer):
            self._writers.discard(w)
            self._silenced.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer in self._silenced:
                    continue  # swallowed: the other side never hears of it
                writer.write(data)
                await writer.drain()
        if writer not in self._silenced:
            writer.transport.abort()
