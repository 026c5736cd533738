"""escrowsite.sqlbatch: rows written by one statement are the rows the ORM would write."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from escrowsite import sqlbatch
from escrowsite.errors import InsufficientFunds, LedgerError
from escrowsite.sqlbatch import Add, StatementBatch
from payments.models import WebhookReceipt
from wallets import ledger
from wallets.models import Account, AccountKind, Customer, Transfer, TransferKind

pytestmark = pytest.mark.django_db


def fresh_ids(model, count: int) -> list[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sqlbatch.allocate_ids(model, count)}")
        return cursor.fetchone()[0]


def field_values(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_inserted_rows_read_back_exactly_as_built():
    customer = Customer.objects.create(telegram_id=42)
    (account_id,) = fresh_ids(Account, 1)
    account = Account(
        pk=account_id, kind=AccountKind.CUSTOMER, customer=customer, balance=Decimal("12.34")
    )
    batch = StatementBatch()
    batch.insert([account])
    batch.execute()

    stored = Account.objects.get(pk=account_id)
    assert field_values(stored) == field_values(account)
    assert stored.created_at is not None  # auto_now_add, stamped as an ORM insert would


def test_raw_bytes_json_and_large_amounts_survive_the_trip():
    body = bytes(range(256)) + b"\x00\\x41'\"%s"
    receipt = WebhookReceipt(
        provider="dynopay",
        remote_ip="2001:db8::1",
        headers={"X-Name": "välue ✓", "quote": "'\"%s"},
        body=body,
        body_size=len(body),
        body_sha256="0" * 64,
        signature_valid=True,
    )
    sqlbatch.insert_one(receipt)
    assert receipt.pk is not None

    with transaction.atomic():
        locked = sqlbatch.select_for_update(WebhookReceipt, receipt.pk)
    assert bytes(locked.body) == body
    assert locked.headers == {"X-Name": "välue ✓", "quote": "'\"%s"}
    assert locked.remote_ip == "2001:db8::1"
    assert locked.received_at == WebhookReceipt.objects.get(pk=receipt.pk).received_at

    wallet = Account.objects.create(kind=AccountKind.SUSPENSE)
    batch = StatementBatch()
    batch.update(Account, wallet.pk, balance=Add(Decimal("99999999999999.99")))
    batch.execute()
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("99999999999999.99")


def test_select_for_update_of_a_missing_row_raises_does_not_exist():
    with pytest.raises(WebhookReceipt.DoesNotExist), transaction.atomic():
        sqlbatch.select_for_update(WebhookReceipt, 10**12)


def test_updates_of_one_row_merge_and_a_repeated_field_is_refused():
    account = Account.objects.create(kind=AccountKind.SUSPENSE, balance=Decimal("1.00"))
    batch = StatementBatch()
    batch.update(Account, account.pk, balance=Add(Decimal("2.50")))
    batch.update(Account, account.pk, provider="")
    with pytest.raises(ValueError, match="updated twice"):
        batch.update(Account, account.pk, balance=Add(Decimal("1.00")))
    batch.execute()
    account.refresh_from_db()
    assert account.balance == Decimal("3.50")


def test_an_instance_inserted_by_the_batch_is_not_also_updated():
    (account_id,) = fresh_ids(Account, 1)
    account = Account(pk=account_id, kind=AccountKind.SUSPENSE)
    batch = StatementBatch()
    batch.insert([account])
    account.balance = Decimal("5.00")
    batch.update_instance(account, ["balance"])  # already part of its INSERT
    sql, _ = batch.as_sql()
    assert "UPDATE" not in sql
    batch.execute()
    assert Account.objects.get(pk=account_id).balance == Decimal("5.00")


def test_one_insert_takes_one_model_with_or_without_keys_not_both():
    batch = StatementBatch()
    with pytest.raises(ValueError):
        batch.insert([Account(pk=1, kind="suspense"), Account(kind="suspense")])
    with pytest.raises(ValueError, match="empty"):
        batch.as_sql()


def test_a_failing_part_fails_the_whole_statement_and_nothing_is_written():
    customer = Customer.objects.create(telegram_id=43)
    existing = Account.objects.create(kind=AccountKind.CUSTOMER, customer=customer)
    account_id, duplicate_id = fresh_ids(Account, 2)
    batch = StatementBatch()
    batch.insert([Account(pk=account_id, kind=AccountKind.SUSPENSE, currency="EUR")])
    batch.update(Account, existing.pk, balance=Add(Decimal("1.00")))
    # A second wallet for the same customer and currency: the unique constraint refuses.
    batch.insert([Account(pk=duplicate_id, kind=AccountKind.CUSTOMER, customer=customer)])
    with pytest.raises(IntegrityError), transaction.atomic():
        batch.execute()
    assert not Account.objects.filter(pk__in=[account_id, duplicate_id]).exists()
    existing.refresh_from_db()
    assert existing.balance == Decimal("0")


def test_batched_posting_credits_new_accounts_by_insert_and_existing_ones_by_update():
    clearing = ledger.clearing_account(provider="dynopay")
    customer = Customer.objects.create(telegram_id=44)
    wallet = ledger.customer_wallet(customer=customer)
    holding_id, *_ = fresh_ids(Account, 1)
    holding = Account(pk=holding_id, kind=AccountKind.ESCROW_HOLDING, currency="USD")
    holding.escrow_id = None  # filled below once the escrow exists

    from escrow.tests.factories import make_escrow

    escrow = make_escrow(buyer_id=44)
    holding.escrow_id = escrow.pk
    batch = StatementBatch()
    batch.insert([holding])
    transfer_ids = fresh_ids(Transfer, 2)
    legs = [
        ledger.Leg(clearing, holding, Decimal("10.00"), TransferKind.ESCROW_PAYMENT, "k:1"),
        ledger.Leg(clearing, wallet, Decimal("0.50"), TransferKind.OVERPAYMENT_CREDIT, "k:2"),
    ]
    transfers = ledger.post_transfers_batched(legs, batch=batch, ids=transfer_ids)
    batch.execute()

    assert [t.pk for t in transfers] == transfer_ids
    assert Account.objects.get(pk=holding_id).balance == Decimal("10.00")
    assert Account.objects.get(pk=wallet.pk).balance == Decimal("0.50")
    assert Account.objects.get(pk=clearing.pk).balance == Decimal("-10.50")
    stored = Transfer.objects.get(idempotency_key="k:1")
    assert (stored.debit_account_id, stored.credit_account_id) == (clearing.pk, holding_id)
    assert stored.created_at <= datetime.now(UTC)


def test_batched_posting_refuses_what_post_transfers_refuses():
    clearing = ledger.clearing_account(provider="dynopay")
    wallet = ledger.customer_wallet(customer=Customer.objects.create(telegram_id=45))
    batch = StatementBatch()
    overdraw = [ledger.Leg(wallet, clearing, Decimal("1.00"), TransferKind.STAFF_ADJUSTMENT, "x:1")]
    with pytest.raises(InsufficientFunds):
        ledger.post_transfers_batched(overdraw, batch=batch, ids=[1])
    twice = [
        ledger.Leg(clearing, wallet, Decimal("1.00"), TransferKind.STAFF_ADJUSTMENT, "x:2"),
        ledger.Leg(clearing, wallet, Decimal("1.00"), TransferKind.STAFF_ADJUSTMENT, "x:2"),
    ]
    with pytest.raises(LedgerError, match="repeat"):
        ledger.post_transfers_batched(twice, batch=batch, ids=[1, 2])
    with pytest.raises(LedgerError, match="cents"):
        ledger.post_transfers_batched(
            [ledger.Leg(clearing, wallet, Decimal("1.001"), TransferKind.STAFF_ADJUSTMENT, "x:3")],
            batch=batch,
            ids=[1],
        )
    assert not batch


def test_a_json_value_the_orm_would_refuse_is_refused_in_a_batch_too():
    # A JSONField takes what json.dumps takes, on both paths: a Decimal inside a payload
    # is an error, never quietly turned into a string on one path only.
    def receipt() -> WebhookReceipt:
        return WebhookReceipt(
            provider="dynopay", headers={"amount": Decimal("1.00")}, body=b"{}", body_size=2,
            body_sha256="0" * 64, signature_valid=True,
        )  # fmt: skip

    with pytest.raises(TypeError), transaction.atomic():
        receipt().save()
    with pytest.raises(TypeError), transaction.atomic():
        sqlbatch.insert_one(receipt())
    assert not WebhookReceipt.objects.exists()
