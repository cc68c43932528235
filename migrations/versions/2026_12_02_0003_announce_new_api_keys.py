"""announce new API keys too

Every process keeps the hashes of all active keys, so that a made-up key is refused without a
database round trip (app/auth/api_keys.py). A key created after a process loaded them must
reach it at once: an INSERT now notifies `orbit_api_key_changes` with the new key's hash, as
UPDATE and DELETE already did with the old one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION notify_api_key_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                PERFORM pg_notify('orbit_api_key_changes', NEW.key_hash);
            ELSE
                PERFORM pg_notify('orbit_api_key_changes', OLD.key_hash);
                IF TG_OP = 'UPDATE' AND NEW.key_hash <> OLD.key_hash THEN
                    PERFORM pg_notify('orbit_api_key_changes', NEW.key_hash);
                END IF;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_keys_created AFTER INSERT ON api_keys
        FOR EACH ROW EXECUTE FUNCTION notify_api_key_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_created ON api_keys")
    op.execute(
        """
        CREATE OR REPLACE FUNCTION notify_api_key_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('orbit_api_key_changes', OLD.key_hash);
            RETURN NULL;
        END
        $$
        """
    )
