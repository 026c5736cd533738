"""Schema drift: every field with `choices` has a CHECK constraint in PostgreSQL that
allows exactly the code's choices, and a write of anything else is refused."""

import re
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import IntegrityError, connection, models, transaction

from payments.tests.test_webhook import incident_escrow
from payments.tests.webhooks import INCIDENT_TX, payload, post
from wallets import services as wallet_services
from wallets.tests.factories import StaffUserFactory

APPS = ("escrow", "wallets", "payments", "notifications")
FIELDS = [
    field
    for app in APPS
    for model in apps.get_app_config(app).get_models()
    for field in model._meta.concrete_fields
    if field.choices
]
# A CHECK that keeps the column, and only it, to a list: Q(<field>__in=[...]) reads back
# as CHECK (((col)::text = ANY ((ARRAY['a'::character varying, ...])::text[]))).
_LIST_CHECK = (
    r"CHECK \(\(\({column}\)::text = ANY "
    r"\(\(ARRAY\[(?P<values>[^\]]*)\]\)::text\[\]\)\)\)"
)
_LITERAL = re.compile(r"'((?:[^']|'')*)'::")
CHECK_VIOLATION = "23514"


def label(field: models.Field) -> str:
    return f"{field.model._meta.label}.{field.name}"


def test_the_fields_under_test_are_found():
    # Not vacuous: the walk sees the models, including the append-only status history.
    assert {
        "escrow.Escrow.status",
        "escrow.StatusChange.from_status",
        "escrow.StatusChange.to_status",
        "payments.WebhookReceipt.outcome",
        "wallets.Transfer.kind",
        "notifications.Notification.status",
    } <= {label(field) for field in FIELDS}


def check_constraints(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'c'",
            [table],
        )
        return dict(cursor.fetchall())


def append_only(table: str) -> bool:
    """The table refuses UPDATE by a trigger (ledger transfers, status history)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal AND tgtype & 16 = 16)",  # TRIGGER_TYPE_UPDATE
            [table],
        )
        return cursor.fetchone()[0]


@pytest.fixture
def every_table_has_a_row(client) -> None:
    """One row in each table under test, written the way the code writes them."""
    incident_escrow()  # escrow, status history, accounts, transfers, a record
    assert post(client, payload(tx_id=INCIDENT_TX)).json()["outcome"] == "applied"
    # A pending adjustment request (above the approval threshold).
    staff = StaffUserFactory()
    wallet_services.adjust_wallet(
        customer_id=5590563715, amount=Decimal("500.00"), reason="test", actor_id=staff.pk
    )
    for field in FIELDS:
        assert field.model.objects.exists(), label(field)


@pytest.mark.django_db
@pytest.mark.parametrize("field", FIELDS, ids=label)
def test_the_database_allows_exactly_the_codes_choices(field, every_table_has_a_row):
    table, column = field.model._meta.db_table, field.column
    pattern = re.compile(_LIST_CHECK.format(column=re.escape(column)))
    checks = check_constraints(table)
    lists = {
        name: match["values"]
        for name, definition in checks.items()
        if (match := pattern.fullmatch(definition))
    }
    assert lists, f"no CHECK constraint on {table}.{column} (schema drift: {label(field)})"
    assert len(lists) == 1, lists
    [(name, values)] = lists.items()
    allowed = {value.replace("''", "'") for value in _LITERAL.findall(values)}
    assert allowed == {str(value) for value, _ in field.flatchoices}, name

    # A write of a value the code does not know is refused by a CHECK on this column
    # (PostgreSQL names the first one that fails: it may be a rule that also reads it).
    pk = field.model.objects.order_by("pk").values_list("pk", flat=True).first()
    quote = connection.ops.quote_name
    if append_only(table):
        # Rows are never updated: try to insert a copy with the bogus value instead.
        columns = [f.column for f in field.model._meta.concrete_fields if not f.primary_key]
        values = ["'bogus'" if c == column else quote(c) for c in columns]
        sql = (
            f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) "
            f"SELECT {', '.join(values)} FROM {quote(table)} WHERE id = %s"
        )
    else:
        sql = f"UPDATE {quote(table)} SET {quote(column)} = 'bogus' WHERE id = %s"
    with (
        pytest.raises(IntegrityError) as refused,
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [pk])
    cause = refused.value.__cause__
    assert cause.sqlstate == CHECK_VIOLATION, cause
    assert re.search(rf"\b{re.escape(column)}\b", checks[cause.diag.constraint_name])
