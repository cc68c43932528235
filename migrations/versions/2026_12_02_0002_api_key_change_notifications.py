"""notify every replica when an API key changes

Any UPDATE or DELETE of an api_keys row (revocation by `orbit-exports api-keys revoke`, or by
any other writer) sends the key's hash on the `orbit_api_key_changes` channel; each process of
the service listens and forgets the key at once (app/db/notifications.py). The hash, not the
key: it is what the caches are keyed by, and it opens nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION notify_api_key_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('orbit_api_key_changes', OLD.key_hash);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION notify_api_key_change()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_keys_changed ON api_keys")
    op.execute("DROP FUNCTION notify_api_key_change()")
