"""an export's bucket name follows B2's rules

A download URL is built from the row's bucket name: B2's native download URL puts it in the path
(`/file/<bucket>/<name>`), an S3 virtual-hosted URL in the host (`<bucket>.<endpoint host>`).
A name outside B2's rules (6-63 letters, digits and hyphens, not starting with `b2-`) could send
that URL somewhere else, so the table refuses it (CHECK
`ck_intent_audience_exports_bucket_name_is_b2s`). NOT VALID, as 0004's rule: rows written
before stay readable, and the signer refuses them on its own (502 STORAGE_ERROR).

Additive (expand only): the service of the previous release writes nothing and reads as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE intent_audience_exports
        ADD CONSTRAINT ck_intent_audience_exports_bucket_name_is_b2s CHECK (
            bucket_name IS NULL OR (
                bucket_name ~ '^[A-Za-z0-9-]{6,63}$' AND bucket_name NOT LIKE 'b2-%'
            )
        ) NOT VALID
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE intent_audience_exports"
        " DROP CONSTRAINT ck_intent_audience_exports_bucket_name_is_b2s"
    )
