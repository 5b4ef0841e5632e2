#!/bin/sh
# The application role of the dev PostgreSQL (k8s/deps/postgres.yaml runs this once, at its
# first start): rows only, no DDL. The statements after CREATE ROLE are
# shared.store.pg.roles.grants("stanzad") (tests/ops/test_k8s.py checks they still are);
# the owner is the image's POSTGRES_USER, `stanzad`. docs/operations.md, "PostgreSQL: the
# store of record".
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE stanzad_app LOGIN PASSWORD '$APP_PASSWORD';
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO stanzad_app;
ALTER DEFAULT PRIVILEGES FOR ROLE stanzad IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO stanzad_app;
ALTER DEFAULT PRIVILEGES FOR ROLE stanzad IN SCHEMA public GRANT USAGE ON SEQUENCES TO stanzad_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO stanzad_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO stanzad_app;
SQL
