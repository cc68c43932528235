"""the audit of every download URL handed out

One row per URL handed out (minted or reused): issued_at, request_id, organization_id,
actor_id (the API key's id or the JWT's `sub`), auth_method, export_id, audience_id, run_id,
signer, bucket_name, file_name, url_expires_at, reused, client_ip, user_agent (at most 512
characters). Never the URL, its token, the API key or the JWT. Written by the service in
batches off the request path (`app/audit`), read and pruned by `orbit-exports audit`.

Additive (expand only): a new table the previous release does not know of. `orbit-exports
migrate` with DB_SERVICE_ROLE grants that role INSERT on it, nothing else.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "export_url_audit",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=False),
        sa.Column("auth_method", sa.Text(), nullable=False),
        sa.Column("export_id", sa.Uuid(), nullable=False),
        sa.Column("audience_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("signer", sa.Text(), nullable=False),
        sa.Column("bucket_name", sa.Text(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("url_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reused", sa.Boolean(), nullable=False),
        sa.Column("client_ip", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "auth_method IN ('api_key', 'jwt')", name=op.f("ck_export_url_audit_auth_method")
        ),
        sa.CheckConstraint(
            "signer IN ('b2-native', 's3')", name=op.f("ck_export_url_audit_signer")
        ),
        sa.CheckConstraint(
            "length(user_agent) <= 512", name=op.f("ck_export_url_audit_user_agent_bounded")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_url_audit")),
    )
    op.create_index(
        op.f("ix_export_url_audit_organization_id_issued_at"),
        "export_url_audit",
        ["organization_id", "issued_at"],
    )
    op.create_index(
        op.f("ix_export_url_audit_organization_id_export_id_issued_at"),
        "export_url_audit",
        ["organization_id", "export_id", "issued_at"],
    )
    op.create_index(
        op.f("ix_export_url_audit_organization_id_actor_id_issued_at"),
        "export_url_audit",
        ["organization_id", "actor_id", "issued_at"],
    )
    op.create_index(op.f("ix_export_url_audit_issued_at"), "export_url_audit", ["issued_at"])


def downgrade() -> None:
    op.drop_table("export_url_audit")
