"""The one use of asyncpg's private API: the socket under a connection, for TCP keepalives.

asyncpg (0.32) has no keepalive option, and a connection whose path dies without a word (a NAT
or load balancer's idle timeout, a failover to another host) would otherwise look alive until a
statement's deadline, or for ever when idle (the listening connection). The kernel's keepalives
and TCP_USER_TIMEOUT end such a connection: it is then replaced as any lost connection is.

`Connection._transport` is read here and nowhere else; `tests/db/test_asyncpg_compat.py` pins
the installed asyncpg to `WRITTEN_FOR` and checks the options on a real connection's socket.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import asyncpg

# The asyncpg minor line this was read from.
WRITTEN_FOR = "0.32"


def installed_asyncpg_line() -> str:
    major, minor, *_ = asyncpg.__version__.split(".")
    return f"{major}.{minor}"


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Probe after `idle` seconds of silence, every `interval`, give up after `count` unanswered
    (dead after idle + interval x count); unacknowledged data gives up after `user_timeout`."""

    idle: int
    interval: int
    count: int
    user_timeout: float


def enable_keepalive(connection: asyncpg.Connection, keepalive: Keepalive) -> None:
    """Turn the connection's TCP keepalives on (nothing to do over a Unix socket)."""
    transport = connection._transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        milliseconds = int(keepalive.user_timeout * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
