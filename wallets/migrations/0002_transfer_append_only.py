"""Ledger rows are append-only: the database itself rejects UPDATE and DELETE on transfers."""

from django.db import migrations

PG_UP = """
-- Shared by every append-only table (ledger transfers, audit and status history).
CREATE OR REPLACE FUNCTION append_only_guard() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused',
        HINT = 'Correct it with a new row (for the ledger: a reversing transfer).',
        ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER wallets_transfer_append_only
    BEFORE UPDATE OR DELETE ON wallets_transfer
    FOR EACH ROW EXECUTE FUNCTION append_only_guard();
"""
PG_DOWN = """
DROP TRIGGER IF EXISTS wallets_transfer_append_only ON wallets_transfer;
DROP FUNCTION IF EXISTS append_only_guard();
"""
SQLITE_UP = [
    """CREATE TRIGGER wallets_transfer_no_update BEFORE UPDATE ON wallets_transfer
       BEGIN SELECT RAISE(ABORT, 'wallets_transfer is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER wallets_transfer_no_delete BEFORE DELETE ON wallets_transfer
       BEGIN SELECT RAISE(ABORT, 'wallets_transfer is append-only: DELETE refused'); END;""",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS wallets_transfer_no_update;",
    "DROP TRIGGER IF EXISTS wallets_transfer_no_delete;",
]


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_UP)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_UP:
            schema_editor.execute(statement)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_DOWN)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_DOWN:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("wallets", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
