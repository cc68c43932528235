"""an export's file name must name one file, related to no other export's

A B2 download authorization is a prefix capability: a token for `exports/a.csv` also opens
`exports/a.csv.bak`, and one for `''` the whole bucket. So:

- `file_name` may not be empty, end with `/` (a folder), or have a `.` or `..` segment
  (CHECK `ck_intent_audience_exports_file_name_is_one_file`; NOT VALID, so rows written
  before stay readable: the signer refuses them on its own);
- a file name may not be a proper prefix of another export's file name in the same bucket,
  nor have one as its prefix, and two organizations may not share a file name (trigger
  `intent_audience_exports_file_name_unrelated`; registrations in one bucket are serialized
  with an advisory lock so concurrent writers cannot both pass).

The rule for whoever writes exports: one object per export, named so that no name is the
beginning of another (e.g. `exports/<org>/<audience>/<run>/<export id>.csv`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE intent_audience_exports
        ADD CONSTRAINT ck_intent_audience_exports_file_name_is_one_file CHECK (
            file_name IS NULL OR (
                file_name <> ''
                AND right(file_name, 1) <> '/'
                AND file_name !~ '(^|/)[.]{1,2}(/|$)'
            )
        ) NOT VALID
        """
    )
    # Prefix searches in C collation can use a btree index (`^@`, PostgreSQL 15).
    op.execute(
        """
        CREATE INDEX ix_intent_audience_exports_bucket_file_name
        ON intent_audience_exports (bucket_name, file_name COLLATE "C")
        """
    )
    op.execute(
        """
        CREATE FUNCTION refuse_related_export_file_names() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            other uuid;
        BEGIN
            IF NEW.file_name IS NULL OR NEW.bucket_name IS NULL
               OR NEW.file_name = '' OR right(NEW.file_name, 1) = '/' THEN
                RETURN NEW;  -- nothing to compare, or the CHECK refuses it
            END IF;
            PERFORM pg_advisory_xact_lock(
                hashtextextended('orbit-export-files:' || NEW.bucket_name, 0)
            );
            -- EXECUTE: planned with the values, so both searches are index range scans.
            -- Names that start with this one (longer, or equal in another organization):
            EXECUTE $q$
                SELECT id FROM intent_audience_exports
                WHERE bucket_name = $1 AND id <> $2
                  AND file_name COLLATE "C" ^@ $3
                  AND (file_name <> $3 OR organization_id <> $4)
                LIMIT 1
            $q$ INTO other USING NEW.bucket_name, NEW.id, NEW.file_name, NEW.organization_id;
            -- Names this one starts with:
            IF other IS NULL THEN
                EXECUTE $q$
                    SELECT id FROM intent_audience_exports
                    WHERE bucket_name = $1 AND id <> $2 AND file_name COLLATE "C" = ANY ($3)
                    LIMIT 1
                $q$ INTO other USING NEW.bucket_name, NEW.id, ARRAY(
                    SELECT left(NEW.file_name, n)
                    FROM generate_series(1, length(NEW.file_name) - 1) AS n
                );
            END IF;
            IF other IS NOT NULL THEN
                RAISE EXCEPTION 'file name overlaps the file name of export %', other
                    USING ERRCODE = 'check_violation',
                          CONSTRAINT = 'intent_audience_exports_file_name_unrelated',
                          HINT = 'A download token opens every name starting with the file name:'
                              ' name each export''s file so that no name begins another.';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER intent_audience_exports_file_name_unrelated
        BEFORE INSERT OR UPDATE OF bucket_name, file_name ON intent_audience_exports
        FOR EACH ROW EXECUTE FUNCTION refuse_related_export_file_names()
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER intent_audience_exports_file_name_unrelated ON intent_audience_exports"
    )
    op.execute("DROP FUNCTION refuse_related_export_file_names()")
    op.execute("DROP INDEX ix_intent_audience_exports_bucket_file_name")
    op.execute(
        "ALTER TABLE intent_audience_exports"
        " DROP CONSTRAINT ck_intent_audience_exports_file_name_is_one_file"
    )
