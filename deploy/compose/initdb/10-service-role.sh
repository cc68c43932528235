#!/bin/sh
# Run once by the postgres image when it initialises its volume: the least-privileged role the
# API connects as. `orbit-exports migrate` (the migrate service, as the owner) grants it what the
# service reads and sets its statement_timeout (DB_SERVICE_ROLE).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v password="$SERVICE_DB_PASSWORD" <<'SQL'
CREATE ROLE orbit_service LOGIN PASSWORD :'password';
SQL
