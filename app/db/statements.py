"""The request path's statements, written with SQLAlchemy Core against `app.db.tables` and
compiled once, at import, to the SQL asyncpg takes (`$1`, `$2`, ... in a fixed order): column
lists and conditions cannot drift from the schema, and no request pays for compiling."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_DIALECT = asyncpg.dialect()  # type: ignore[no-untyped-call]


def compiled(statement: ClauseElement, *parameters: str) -> str:
    """`statement`'s SQL for `Database`; its bind parameters must be `parameters`, in order,
    which is the order the arguments are then passed in."""
    sql = statement.compile(dialect=_DIALECT)
    assert isinstance(sql, SQLCompiler)
    if tuple(sql.positiontup or ()) != parameters:
        raise AssertionError(f"bind parameters {sql.positiontup} are not {parameters}")
    return str(sql)
