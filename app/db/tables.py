"""Table definitions (SQLAlchemy Core). The schema itself is made by the Alembic migrations;
these mirror them so queries are typed and `alembic check` can catch drift."""

from __future__ import annotations

from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import INET

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ExportStatus = Literal["processing", "completed", "failed"]
EXPORT_STATUSES: tuple[str, ...] = get_args(ExportStatus)

# Owned by the wider platform: names and types are fixed by the export pipeline that writes it.
intent_audience_exports = Table(
    "intent_audience_exports",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("organization_id", Uuid, nullable=False),
    Column("audience_id", Uuid, nullable=False),
    Column("run_id", Uuid, nullable=False),
    Column("export_type", Text, nullable=False, server_default="csv"),
    Column("status", Text, nullable=False),
    Column("storage_provider", Text, nullable=False, server_default="b2"),
    Column("bucket_name", Text),
    Column("file_id", Text),
    Column("file_name", Text),
    Column("content_type", Text, nullable=False, server_default="text/csv"),
    Column("byte_size", BigInteger, nullable=False, server_default="0"),
    Column("row_count", Integer, nullable=False, server_default="0"),
    Column("content_sha1", Text),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("requested_by", Uuid),
    Column("completed_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("export_type IN ('csv')", name="export_type"),
    CheckConstraint(f"status IN ({', '.join(map(repr, EXPORT_STATUSES))})", name="status"),
    CheckConstraint("storage_provider IN ('b2')", name="storage_provider"),
    CheckConstraint("byte_size >= 0", name="byte_size_non_negative"),
    CheckConstraint("row_count >= 0", name="row_count_non_negative"),
    # A completed export must say where its file is, or no URL can be signed for it.
    CheckConstraint(
        "status <> 'completed' OR (bucket_name IS NOT NULL AND file_name IS NOT NULL)",
        name="completed_has_file",
    ),
    # An export's file is one object (migration 0004): a B2 download token opens every name
    # that starts with the token's file name.
    CheckConstraint(
        "file_name IS NULL OR (file_name <> '' AND right(file_name, 1) <> '/'"
        " AND file_name !~ '(^|/)[.]{1,2}(/|$)')",
        name="file_name_is_one_file",
    ),
    # A download URL carries the bucket in its path or host (migration 0005): B2's rule only.
    CheckConstraint(
        "bucket_name IS NULL OR (bucket_name ~ '^[A-Za-z0-9-]{6,63}$'"
        " AND bucket_name NOT LIKE 'b2-%')",
        name="bucket_name_is_b2s",
    ),
    Index(None, "organization_id", "audience_id", "run_id"),
    # For the trigger that refuses file names overlapping another export's. Migration 0004
    # builds it on `file_name COLLATE "C"` (prefix searches need it); reflection does not
    # report an index column's collation, so it is declared on the plain column here.
    Index("ix_intent_audience_exports_bucket_file_name", "bucket_name", "file_name"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True, server_default=text("gen_random_uuid()")),
    Column("organization_id", Uuid, nullable=False),
    Column("name", Text, nullable=False),
    # First characters of the key, kept in clear so people can tell their keys apart.
    Column("prefix", Text, nullable=False),
    # SHA-256 of the whole key (hex). Keys carry 256 bits of entropy, so a fast hash is enough.
    Column("key_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Index(None, "organization_id"),
)


# Every download URL handed out (migration 0006): who, what, when, from where, until when;
# never the URL, its token, the API key or the JWT. The service may only INSERT here.
export_url_audit = Table(
    "export_url_audit",
    metadata,
    # Made by the service, so that a batch sent twice (a connection lost mid-way) counts once.
    Column("id", Uuid, primary_key=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("request_id", Text, nullable=False),
    Column("organization_id", Uuid, nullable=False),
    # The API key's id, or the dashboard user's `sub`.
    Column("actor_id", Text, nullable=False),
    Column("auth_method", Text, nullable=False),
    Column("export_id", Uuid, nullable=False),
    Column("audience_id", Uuid, nullable=False),
    Column("run_id", Uuid, nullable=False),
    Column("signer", Text, nullable=False),
    Column("bucket_name", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("url_expires_at", DateTime(timezone=True), nullable=False),
    Column("reused", Boolean, nullable=False),
    Column("client_ip", INET),
    Column("user_agent", Text),
    CheckConstraint("auth_method IN ('api_key', 'jwt')", name="auth_method"),
    CheckConstraint("signer IN ('b2-native', 's3')", name="signer"),
    CheckConstraint("length(user_agent) <= 512", name="user_agent_bounded"),
    # What a security team asks: an organization's records by time, by export, by actor.
    Index(None, "organization_id", "issued_at"),
    Index(None, "organization_id", "export_id", "issued_at"),
    Index(None, "organization_id", "actor_id", "issued_at"),
    # `audit prune` deletes by age.
    Index(None, "issued_at"),
)
