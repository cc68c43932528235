"""intent_audience_exports and api_keys

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "intent_audience_exports",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("audience_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("export_type", sa.Text(), server_default="csv", nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("storage_provider", sa.Text(), server_default="b2", nullable=False),
        sa.Column("bucket_name", sa.Text(), nullable=True),
        sa.Column("file_id", sa.Text(), nullable=True),
        sa.Column("file_name", sa.Text(), nullable=True),
        sa.Column("content_type", sa.Text(), server_default="text/csv", nullable=False),
        sa.Column("byte_size", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("row_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("content_sha1", sa.Text(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.Uuid(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "export_type IN ('csv')", name=op.f("ck_intent_audience_exports_export_type")
        ),
        sa.CheckConstraint(
            "status IN ('processing', 'completed', 'failed')",
            name=op.f("ck_intent_audience_exports_status"),
        ),
        sa.CheckConstraint(
            "storage_provider IN ('b2')", name=op.f("ck_intent_audience_exports_storage_provider")
        ),
        sa.CheckConstraint(
            "byte_size >= 0", name=op.f("ck_intent_audience_exports_byte_size_non_negative")
        ),
        sa.CheckConstraint(
            "row_count >= 0", name=op.f("ck_intent_audience_exports_row_count_non_negative")
        ),
        sa.CheckConstraint(
            "status <> 'completed' OR (bucket_name IS NOT NULL AND file_name IS NOT NULL)",
            name=op.f("ck_intent_audience_exports_completed_has_file"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_intent_audience_exports")),
    )
    op.create_index(
        op.f("ix_intent_audience_exports_organization_id_audience_id_run_id"),
        "intent_audience_exports",
        ["organization_id", "audience_id", "run_id"],
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_index(op.f("ix_api_keys_organization_id"), "api_keys", ["organization_id"])


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("intent_audience_exports")
