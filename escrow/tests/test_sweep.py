"""escrow_sweep: each deadline, re-checks under lock, concurrent sweeps, warnings, dry runs."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models.functions import Now
from django.utils import timezone

from escrow import services, sweeps
from escrow.models import Escrow, EscrowHolding, EscrowStatus, StatusChange
from escrow.tests.factories import escrow_in_status, make_escrow, pay
from escrow.tests.helpers import assert_ledger_balanced, db_state, holding_balance, wallet
from notifications.models import Notification
from payments import services as payment_services
from payments.models import Outcome
from payments.signing import sign
from payments.tests.webhooks import SECRET, encode, payload
from wallets import ledger
from wallets.money import quantize_usd
from wallets.tests.factories import break_ledger, fund

S = EscrowStatus
D = Decimal
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("orm_claim_agrees_with_sql_claim")


def overdue(escrow: Escrow, field: str = "expires_at", by: timedelta = timedelta(minutes=5)):
    """Move one deadline into the past on the database clock."""
    Escrow.objects.filter(pk=escrow.pk).update(**{field: Now() - by})
    escrow.refresh_from_db()
    return escrow


def due_in(escrow: Escrow, field: str, left: timedelta, *, window: timedelta, start: str):
    """Put a deadline `left` ahead, in a window of length `window` that began at `start`."""
    Escrow.objects.filter(pk=escrow.pk).update(
        **{field: Now() + left, start: Now() + left - window}
    )
    escrow.refresh_from_db()
    return escrow


def sweep(*args: str) -> tuple[dict, int]:
    """Run the command with --json; (report, exit code)."""
    out, err = StringIO(), StringIO()
    try:
        call_command("escrow_sweep", "--json", *args, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        code = exc.returncode
    return json.loads(out.getvalue()), code


def by_escrow(report: dict) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for item in report["items"]:
        found.setdefault(item["escrow_id"], []).append((item["task"], item["outcome"]))
    return found


def sweep_changes(escrow: Escrow) -> list[tuple[str, str]]:
    return list(
        StatusChange.objects.filter(escrow=escrow, source="sweep").values_list(
            "from_status", "to_status"
        )
    )


# --- each kind of deadline -------------------------------------------------------------


@pytest.mark.django_db
def test_unpaid_escrow_past_its_payment_window_expires_and_one_inside_it_does_not():
    late = overdue(make_escrow())
    on_time = make_escrow()  # 60 minutes left
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {late.escrow_id: [("expire", "done")]}
    late.refresh_from_db()
    on_time.refresh_from_db()
    assert (late.status, late.expires_at) == (S.EXPIRED, None)
    assert sweep_changes(late) == [(S.PAYMENT_PENDING, S.EXPIRED)]
    assert on_time.status == S.PAYMENT_PENDING
    assert Notification.objects.filter(
        escrow=late, event="expired", customer_id=late.buyer_id
    ).exists()


@pytest.mark.django_db
def test_created_escrow_past_its_window_is_cancelled():
    escrow = overdue(escrow_in_status(S.CREATED))
    report, code = sweep("--no-warnings")
    assert code == 0
    escrow.refresh_from_db()
    assert escrow.status == S.CANCELLED
    assert sweep_changes(escrow) == [(S.CREATED, S.CANCELLED)]


@pytest.mark.django_db
def test_partially_paid_escrow_past_its_window_refunds_the_part_to_the_buyer_wallet():
    escrow = make_escrow(amount=D("92.13"))
    half = quantize_usd(escrow.total_due / 2)
    pay(escrow, half)
    overdue(escrow)
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {escrow.escrow_id: [("refund_partial", "done")]}
    escrow.refresh_from_db()
    assert escrow.status == S.REFUNDED
    assert wallet(escrow.buyer_id) == half
    assert holding_balance(escrow) == 0
    assert wallet(escrow.seller_id) == 0
    assert sweep_changes(escrow) == [(S.PARTIALLY_PAID, S.REFUNDED)]
    assert_ledger_balanced()


@pytest.mark.django_db
def test_paid_escrow_the_seller_did_not_accept_in_time_is_refunded_in_full():
    escrow = overdue(escrow_in_status(S.PAYMENT_CONFIRMED))
    waiting = escrow_in_status(S.PAYMENT_CONFIRMED)  # its seller still has 24 hours
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {escrow.escrow_id: [("refund_unaccepted", "done")]}
    escrow.refresh_from_db()
    waiting.refresh_from_db()
    assert escrow.status == S.REFUNDED
    assert wallet(escrow.buyer_id) == escrow.total_due
    assert waiting.status == S.PAYMENT_CONFIRMED
    assert holding_balance(waiting) == waiting.total_due
    change = StatusChange.objects.get(escrow=escrow, source="sweep")
    assert "did not accept" in change.reason
    assert_ledger_balanced()


@pytest.mark.django_db
def test_delivered_escrow_past_auto_release_pays_the_seller():
    escrow = overdue(escrow_in_status(S.DELIVERED), "auto_release_at")
    waiting = escrow_in_status(S.DELIVERED)  # 72 hours left
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {escrow.escrow_id: [("auto_release", "done")]}
    escrow.refresh_from_db()
    waiting.refresh_from_db()
    assert escrow.status == S.COMPLETED
    assert wallet(escrow.seller_id) == escrow.amount - escrow.seller_fee
    assert waiting.status == S.DELIVERED
    assert_ledger_balanced()


@pytest.mark.django_db
@pytest.mark.parametrize("status", [S.ACTIVE, S.DISPUTED, S.COMPLETED, S.REFUNDED, S.EXPIRED])
def test_escrows_without_a_sweep_deadline_are_never_touched(status):
    escrow = escrow_in_status(status)
    # Even with stale timestamps in the past, nothing applies to these statuses.
    Escrow.objects.filter(pk=escrow.pk).update(
        expires_at=Now() - timedelta(days=3), auto_release_at=Now() - timedelta(days=3)
    )
    before = db_state()
    report, code = sweep()
    assert (report["items"], code) == ([], 0)
    assert db_state() == before


@pytest.mark.django_db
def test_deadlines_follow_the_database_clock_not_the_app_servers(monkeypatch):
    escrow = make_escrow()  # due in an hour on the database clock
    ahead = timezone.now() + timedelta(days=2)
    monkeypatch.setattr(timezone, "now", lambda: ahead)  # an app host whose clock runs fast
    report, code = sweep("--no-warnings")
    assert (report["items"], code) == ([], 0)
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING
    # And the times the sweep writes are the database's too.
    monkeypatch.undo()
    overdue(escrow)
    monkeypatch.setattr(timezone, "now", lambda: ahead)
    sweep("--no-warnings")
    escrow.refresh_from_db()
    assert escrow.status == S.EXPIRED
    assert escrow.status_changed_at < ahead - timedelta(days=1)


# --- never touching an escrow that changed since it was selected -------------------------


@pytest.mark.django_db
def test_an_escrow_paid_after_selection_is_not_expired_and_keeps_its_money():
    escrow = overdue(make_escrow())
    [candidate] = sweeps.deadline_candidates()
    assert (candidate.escrow_id, candidate.task) == (escrow.escrow_id, "expire")
    pay(escrow)  # the payment commits after the candidate list was computed
    # Even with its (new) deadline already past, the stale candidate does not apply.
    overdue(escrow)
    result = sweeps.run_item(candidate)
    assert result.outcome == sweeps.Result.SKIPPED
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert holding_balance(escrow) == escrow.total_due
    assert sweep_changes(escrow) == []


@pytest.mark.django_db
def test_the_whole_command_skips_an_escrow_paid_between_planning_and_handling(monkeypatch):
    escrow = overdue(make_escrow())
    other = overdue(make_escrow())
    plan = sweeps.plan_sweep

    def plan_then_pay(**kwargs):
        tasks = plan(**kwargs)
        pay(escrow)
        return tasks

    monkeypatch.setattr(sweeps.run, "plan_sweep", plan_then_pay)
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {
        escrow.escrow_id: [("expire", "skipped")],
        other.escrow_id: [("expire", "done")],
    }
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert holding_balance(escrow) == escrow.total_due


@pytest.mark.django_db
def test_paid_escrow_auto_cancelled_is_impossible_when_its_payment_was_lost(monkeypatch):
    """The incident: a valid signed payment.confirmed delivery on record whose processing
    failed, the escrow still payment_pending and past its window. The sweep must not close
    it; once payments_retry applies the payment the escrow is simply paid."""
    escrow = make_escrow(amount=D("96.19"))
    body = encode(payload(escrow_id=escrow.escrow_id, base_amount=str(escrow.total_due)))
    receipt = payment_services.store_receipt(
        body=body, headers={"X-DynoPay-Signature": sign(body, SECRET)}, remote_ip="127.0.0.1"
    )
    with monkeypatch.context() as patch:
        break_ledger(patch)
        assert (
            payment_services.run_processing(receipt_id=receipt.pk, source="webhook").status == 500
        )
    receipt.refresh_from_db()
    assert receipt.outcome == Outcome.FAILED
    overdue(escrow, by=timedelta(hours=3))

    report, code = sweep("--no-warnings")
    assert code == 2
    [item] = report["items"]
    assert (item["escrow_id"], item["outcome"]) == (escrow.escrow_id, "held")
    assert "payments_retry" in item["detail"]
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING

    call_command("payments_retry", "--json", stdout=StringIO())
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    report, code = sweep("--no-warnings")
    assert (report["items"], code) == ([], 0)
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_CONFIRMED
    assert holding_balance(escrow) == escrow.total_due


@pytest.mark.django_db
def test_an_unpaid_escrow_whose_holding_holds_money_is_held_not_expired(caplog):
    escrow = overdue(make_escrow())
    # A broken database: money reached the holding account without the status moving.
    fund(ledger.open_holding_account(escrow_id=escrow.pk), D("10.00"))
    report, code = sweep("--no-warnings")
    assert code == 2
    assert by_escrow(report) == {escrow.escrow_id: [("expire", "held")]}
    assert any(
        r.levelname == "WARNING" and escrow.escrow_id in r.getMessage() for r in caplog.records
    )
    escrow.refresh_from_db()
    assert escrow.status == S.PAYMENT_PENDING
    assert sweep_changes(escrow) == []


# --- two sweeps at once ----------------------------------------------------------------


def _database_url() -> str:
    db = connection.settings_dict
    return (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}"
    )


@pytest.mark.django_db(transaction=True)
def test_an_escrow_locked_by_another_transaction_is_skipped_without_waiting():
    import psycopg

    locked = overdue(make_escrow())
    free = overdue(make_escrow())
    with psycopg.connect(_database_url()) as other:
        # Another sweep (or a payment) holds the row, its transaction still open.
        other.execute("SELECT id FROM escrow_escrow WHERE id = %s FOR UPDATE", [locked.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")  # a wait would fail, not hang
        report, code = sweep("--no-warnings")
        other.rollback()
    assert code == 0
    assert by_escrow(report) == {
        locked.escrow_id: [("expire", "skipped")],
        free.escrow_id: [("expire", "done")],
    }
    locked.refresh_from_db()
    assert locked.status == S.PAYMENT_PENDING
    # Once the other transaction is gone, the next sweep handles it.
    assert by_escrow(sweep("--no-warnings")[0]) == {locked.escrow_id: [("expire", "done")]}


def _sweep_process(*args: str) -> subprocess.Popen:
    env = os.environ | {
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": "test-only",
        "DEBUG": "false",
        "NOTIFICATIONS_DISPATCH_AFTER_COMMIT": "false",
        "ESCROW_WARN_BEFORE_HOURS": "6",
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "escrow_sweep", "--json", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_in_two_processes_handle_each_escrow_exactly_once():
    expiring = [overdue(make_escrow()) for _ in range(120)]
    releasing = [overdue(escrow_in_status(S.DELIVERED), "auto_release_at") for _ in range(15)]
    warned = [
        due_in(
            escrow_in_status(S.PAYMENT_CONFIRMED),
            "expires_at",
            timedelta(hours=2),
            window=timedelta(hours=24),
            start="payment_confirmed_at",
        )
        for _ in range(15)
    ]
    # One of them with worker threads: they must keep apart just the same.
    first, second = _sweep_process(), _sweep_process("--workers", "3")
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    for process, (_out, err) in zip((first, second), outputs, strict=True):
        assert process.returncode == 0, err
    reports = [json.loads(out) for out, _ in outputs]

    done = [
        (item["escrow_id"], item["task"])
        for report in reports
        for item in report["items"]
        if item["outcome"] == "done"
    ]
    expected = (
        {(e.escrow_id, "expire") for e in expiring}
        | {(e.escrow_id, "auto_release") for e in releasing}
        | {(e.escrow_id, "warn:seller_response_deadline") for e in warned}
    )
    assert sorted(done) == sorted(expected)  # every one, none twice
    # Both really worked: the table was shared, not swept by one process alone.
    assert all(any(i["outcome"] == "done" for i in r["items"]) for r in reports)
    for escrow in expiring:
        assert sweep_changes(escrow) == [(S.PAYMENT_PENDING, S.EXPIRED)]
    for escrow in releasing:
        assert sweep_changes(escrow) == [(S.DELIVERED, S.COMPLETED)]
        escrow.refresh_from_db()
        assert wallet(escrow.seller_id) == escrow.amount - escrow.seller_fee
    for escrow in warned:
        assert (
            Notification.objects.filter(
                escrow=escrow, event="seller_response_deadline_warning"
            ).count()
            == 1
        )
    assert_ledger_balanced()


# --- warnings --------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_seller_is_warned_once_before_the_response_deadline(settings):
    settings.ESCROW_WARN_BEFORE_HOURS = 6
    escrow = escrow_in_status(S.PAYMENT_CONFIRMED)
    report, _ = sweep()
    assert report["items"] == []  # 24 hours left: too early
    due_in(
        escrow,
        "expires_at",
        timedelta(hours=5),
        window=timedelta(hours=24),
        start="payment_confirmed_at",
    )
    report, code = sweep()
    assert code == 0
    assert by_escrow(report) == {escrow.escrow_id: [("warn:seller_response_deadline", "done")]}
    [note] = Notification.objects.filter(escrow=escrow, event="seller_response_deadline_warning")
    assert note.customer_id == escrow.seller_id
    assert note.payload["role"] == "seller"
    assert note.payload["deadline"] == escrow.expires_at.isoformat()
    assert 290 <= int(note.payload["minutes_left"]) <= 300

    # Later runs do not send it again, and neither does handling the escrow directly.
    assert sweep()[0]["items"] == []
    again = sweeps.warn_escrow(escrow_pk=escrow.pk, warning_name="seller_response_deadline")
    assert (again.outcome, again.detail) == ("skipped", "already warned about this deadline")
    assert Notification.objects.filter(event="seller_response_deadline_warning").count() == 1


@pytest.mark.django_db
def test_the_buyer_is_warned_before_auto_release_and_halfway_through_a_short_payment_window(
    settings,
):
    settings.ESCROW_WARN_BEFORE_HOURS = 6
    delivered = due_in(
        escrow_in_status(S.DELIVERED),
        "auto_release_at",
        timedelta(hours=3),
        window=timedelta(hours=72),
        start="delivered_at",
    )
    # A 60-minute payment window: warned at 30 minutes left, not from the start.
    fresh = due_in(
        make_escrow(),
        "expires_at",
        timedelta(minutes=40),
        window=timedelta(hours=1),
        start="created_at",
    )
    closing = due_in(
        make_escrow(),
        "expires_at",
        timedelta(minutes=20),
        window=timedelta(hours=1),
        start="created_at",
    )
    report, code = sweep()
    assert code == 0
    assert by_escrow(report) == {
        delivered.escrow_id: [("warn:auto_release", "done")],
        closing.escrow_id: [("warn:payment_deadline", "done")],
    }
    assert (
        Notification.objects.get(escrow=delivered, event="auto_release_warning").customer_id
        == delivered.buyer_id
    )
    assert (
        Notification.objects.get(escrow=closing, event="payment_deadline_warning").customer_id
        == closing.buyer_id
    )
    assert not Notification.objects.filter(escrow=fresh, event__endswith="_warning").exists()


@pytest.mark.django_db
def test_a_new_deadline_gets_its_own_warning_and_warnings_can_be_turned_off(settings):
    settings.ESCROW_WARN_BEFORE_HOURS = 6
    escrow = due_in(
        escrow_in_status(S.PAYMENT_CONFIRMED),
        "expires_at",
        timedelta(hours=2),
        window=timedelta(hours=24),
        start="payment_confirmed_at",
    )
    sweep()
    due_in(
        escrow,
        "expires_at",
        timedelta(hours=1),
        window=timedelta(hours=24),
        start="payment_confirmed_at",
    )
    sweep()
    assert (
        Notification.objects.filter(escrow=escrow, event="seller_response_deadline_warning").count()
        == 2
    )
    settings.ESCROW_WARN_BEFORE_HOURS = 0
    due_in(
        escrow,
        "expires_at",
        timedelta(minutes=30),
        window=timedelta(hours=24),
        start="payment_confirmed_at",
    )
    assert sweep()[0]["items"] == []


@pytest.mark.django_db
def test_a_warning_is_not_sent_for_an_escrow_that_moved_on_since_selection(settings):
    settings.ESCROW_WARN_BEFORE_HOURS = 6
    escrow = due_in(
        escrow_in_status(S.PAYMENT_CONFIRMED),
        "expires_at",
        timedelta(hours=2),
        window=timedelta(hours=24),
        start="payment_confirmed_at",
    )
    [candidate] = sweeps.warning_candidates()
    services.accept_escrow(escrow_id=escrow.escrow_id)
    assert sweeps.run_item(candidate).outcome == "skipped"
    assert not Notification.objects.filter(escrow=escrow, event__endswith="_warning").exists()


# --- dry run, limits, failures ---------------------------------------------------------


@pytest.mark.django_db
def test_dry_run_reports_what_would_happen_and_writes_nothing(settings):
    settings.ESCROW_WARN_BEFORE_HOURS = 6
    expiring = overdue(make_escrow())
    refunding = overdue(escrow_in_status(S.PAYMENT_CONFIRMED))
    releasing = overdue(escrow_in_status(S.DELIVERED), "auto_release_at")
    warned = due_in(
        escrow_in_status(S.DELIVERED),
        "auto_release_at",
        timedelta(hours=1),
        window=timedelta(hours=72),
        start="delivered_at",
    )
    before = db_state()
    report, code = sweep("--dry-run")
    assert code == 0
    assert report["dry_run"] is True
    assert by_escrow(report) == {
        expiring.escrow_id: [("expire", "would")],
        refunding.escrow_id: [("refund_unaccepted", "would")],
        releasing.escrow_id: [("auto_release", "would")],
        warned.escrow_id: [("warn:auto_release", "would")],
    }
    assert {i["escrow_id"]: i["to_status"] for i in report["items"] if i["to_status"]} == {
        expiring.escrow_id: S.EXPIRED,
        refunding.escrow_id: S.REFUNDED,
        releasing.escrow_id: S.COMPLETED,
    }
    assert db_state() == before
    # The real run then does exactly that.
    report, code = sweep()
    assert code == 0
    assert sorted(i["outcome"] for i in report["items"]) == ["done"] * 4


@pytest.mark.django_db
def test_limit_caps_the_number_of_escrows_handled():
    escrows = [overdue(make_escrow(), by=timedelta(minutes=10 - n)) for n in range(3)]
    report, code = sweep("--limit", "2", "--no-warnings")
    assert code == 0
    # Oldest deadline first.
    assert [i["escrow_id"] for i in report["items"]] == [e.escrow_id for e in escrows[:2]]
    assert Escrow.objects.filter(status=S.EXPIRED).count() == 2


@pytest.mark.django_db
def test_a_failing_item_does_not_stop_the_others_and_the_exit_code_says_so(monkeypatch, caplog):
    escrows = [overdue(make_escrow()) for _ in range(3)]
    broken = escrows[1].escrow_id
    real = services.expire_escrow

    def expire(*, escrow_id, **kwargs):
        result = real(escrow_id=escrow_id, **kwargs)
        if escrow_id == broken:
            raise RuntimeError("disk full")  # after its writes: they must roll back
        return result

    real_batch = services.close_unpaid_batch

    def close_batch(*, escrow_pks, **kwargs):
        result = real_batch(escrow_pks=escrow_pks, **kwargs)
        if escrows[1].pk in escrow_pks:
            raise RuntimeError("disk full")  # the whole batch rolls back...
        return result

    monkeypatch.setattr(services, "expire_escrow", expire)
    monkeypatch.setattr(services, "close_unpaid_batch", close_batch)
    report, code = sweep("--no-warnings")
    # ...and is handled again one escrow at a time: only the broken one fails.
    assert any("one at a time" in r.getMessage() for r in caplog.records)
    assert code == 1
    outcomes = {i["escrow_id"]: i for i in report["items"]}
    assert outcomes[broken]["outcome"] == "failed"
    assert outcomes[broken]["detail"] == "RuntimeError: disk full"
    assert "Traceback" in outcomes[broken]["traceback"]
    assert any(r.exc_info and broken in r.getMessage() for r in caplog.records)
    statuses = dict(Escrow.objects.values_list("escrow_id", "status"))
    assert statuses == {
        escrows[0].escrow_id: S.EXPIRED,
        broken: S.PAYMENT_PENDING,
        escrows[2].escrow_id: S.EXPIRED,
    }
    assert sweep_changes(escrows[1]) == []
    assert not Notification.objects.filter(escrow=escrows[1], event="expired").exists()
    # The next run (the fault gone) picks it up.
    monkeypatch.setattr(services, "expire_escrow", real)
    report, code = sweep("--no-warnings")
    assert code == 0
    assert by_escrow(report) == {broken: [("expire", "done")]}


@pytest.mark.django_db
def test_plain_output_and_exit_code_under_cron():
    overdue(make_escrow())
    out = StringIO()
    call_command("escrow_sweep", stdout=out)
    assert out.getvalue().strip() == "1 item(s): 1 handled, 0 skipped, 0 held, 0 failed"


@pytest.mark.django_db
def test_holding_is_resolved_by_every_money_moving_sweep():
    escrows = [
        overdue(escrow_in_status(S.PAYMENT_CONFIRMED)),
        overdue(escrow_in_status(S.DELIVERED), "auto_release_at"),
    ]
    sweep()
    for escrow in escrows:
        holding = EscrowHolding.objects.get(escrow=escrow)
        assert holding.resolved_at is not None
        assert holding_balance(escrow) == 0


def test_warning_keys_name_escrow_deadline_and_recipient():
    warning = sweeps.WARNING_NAMED["auto_release"]
    deadline = datetime(2025, 10, 14, 9, 0, 1, 5, tzinfo=UTC)
    assert (
        sweeps.warning_key(
            escrow_id="ES101325WZY2", warning=warning, deadline=deadline, role="buyer"
        )
        == "ES101325WZY2:auto_release_warning:20251014T090001.000005Z:buyer"
    )


@pytest.mark.django_db
def test_the_batch_path_closes_many_with_history_and_notifications_and_holds_the_unsafe():
    from notifications.models import Notification

    due = [overdue(make_escrow()) for _ in range(5)]
    with_money = overdue(make_escrow())
    from wallets import ledger
    from wallets.models import TransferKind

    account = ledger.open_holding_account(escrow_id=with_money.pk)
    ledger.post_transfer(
        debit=ledger.clearing_account(provider="dynopay"),
        credit=account,
        amount=Decimal("1.00"),
        kind=TransferKind.ESCROW_PAYMENT,
        idempotency_key="odd",
    )
    report, code = sweep("--no-warnings")
    assert code == 2  # one held for a human
    outcomes = {i["escrow_id"]: i["outcome"] for i in report["items"]}
    assert [outcomes[e.escrow_id] for e in due] == ["done"] * 5
    assert outcomes[with_money.escrow_id] == "held"
    for escrow in due:
        escrow.refresh_from_db()
        assert escrow.status == S.EXPIRED and escrow.expires_at is None
        assert (
            StatusChange.objects.filter(escrow=escrow, to_status=S.EXPIRED, source="sweep").count()
            == 1
        )
        assert Notification.objects.filter(escrow=escrow, event=S.EXPIRED).exists()
    with_money.refresh_from_db()
    assert with_money.status == S.PAYMENT_PENDING
