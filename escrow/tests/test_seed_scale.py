"""escrow_seed_scale: a consistent benchmark database, set-based, that the admin can serve."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from escrow.admin_queues import queue_counts
from escrow.models import Escrow, EscrowHolding, EscrowStatus
from escrow.tests.admin_support import change_url, changelist_url, login, staff_user
from escrow.tests.test_admin_queries import CHANGELISTS
from escrow.transitions import FUNDED
from payments.models import PaymentEvent, WebhookReceipt
from payments.tests.test_webhook import assert_ledger_balanced
from wallets.models import Transaction, Transfer


def seed(*args: str) -> dict:
    out = StringIO()
    call_command("escrow_seed_scale", *args, "--json", stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db(transaction=True)
def test_seeds_every_status_with_a_balanced_ledger_that_the_admin_serves():
    report = seed("--escrows", "1000", "--ledger-rows", "6000", "--database-check")

    assert report["check"] == "ok"
    assert Escrow.objects.count() == 1000
    assert Transfer.objects.count() == 6000
    assert set(Escrow.objects.values_list("status", flat=True)) == set(EscrowStatus.values)
    assert_ledger_balanced()  # every balance is its transfers; they sum to zero
    for holding in EscrowHolding.objects.select_related("escrow", "account"):
        if holding.escrow.status in FUNDED:
            assert holding.account.balance == holding.escrow.total_due
        assert (holding.resolved_at is None) == (holding.status in ("collecting", "held"))
    # Customer-facing records point at their ledger rows; receipts at their dedupe rows.
    assert not Transaction.objects.filter(transfers__isnull=True).exists()
    assert (
        PaymentEvent.objects.count()
        == WebhookReceipt.objects.filter(outcome__in=["applied", "parked"]).count()
    )
    shown = {q.key: q.count for q in queue_counts()}
    assert shown["failed"] and shown["parked"] and shown["late"] and shown["notifications"]

    viewer = login(staff_user("viewer", superuser=True))
    for name in CHANGELISTS:
        assert viewer.get(changelist_url(name)).status_code == 200, name
    busy = Escrow.objects.filter(status="completed").first()
    page = viewer.get(change_url("escrow_escrow", busy.pk))
    assert page.status_code == 200 and busy.escrow_id in page.content.decode()


@pytest.mark.django_db(transaction=True)
def test_refuses_a_database_that_already_has_escrows():
    from escrow.tests.factories import make_escrow

    make_escrow()
    with pytest.raises(CommandError, match="already has escrows"):
        seed("--escrows", "100", "--ledger-rows", "100")
    assert Escrow.objects.count() == 1
