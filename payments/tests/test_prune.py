"""payments_prune: old finished bodies go, their hash and trail stay; nothing else moves."""

import hashlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models.functions import Now

from escrow.tests.factories import make_escrow
from payments import pruning, services
from payments.models import Outcome, WebhookReceipt
from payments.signing import sign
from payments.tests.webhooks import SECRET, encode, payload


def delivery(escrow_id: str = "ES000000NONE", *, signed: bool = True, **fields) -> WebhookReceipt:
    body = encode(payload(escrow_id=escrow_id, **fields))
    headers = {"X-DynoPay-Signature": sign(body, SECRET if signed else "wrong-secret")}
    return services.store_receipt(body=body, headers=headers, remote_ip="127.0.0.1")


def applied(days_old: int) -> WebhookReceipt:
    escrow = make_escrow()
    receipt = delivery(escrow.escrow_id, base_amount=str(escrow.total_due))
    assert services.run_processing(receipt_id=receipt.pk, source="webhook").status == 200
    return aged(receipt, days_old)


def aged(receipt: WebhookReceipt, days_old: int) -> WebhookReceipt:
    WebhookReceipt.objects.filter(pk=receipt.pk).update(
        received_at=Now() - timedelta(days=days_old)
    )
    receipt.refresh_from_db()
    return receipt


def with_outcome(outcome: str, days_old: int, **fields) -> WebhookReceipt:
    receipt = delivery()
    WebhookReceipt.objects.filter(pk=receipt.pk).update(outcome=outcome, **fields)
    return aged(receipt, days_old)


def prune(*args: str) -> dict:
    out = StringIO()
    call_command("payments_prune", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def receipts() -> list[dict]:
    return list(WebhookReceipt.objects.order_by("pk").values())


@pytest.mark.django_db
def test_old_applied_receipts_lose_their_body_and_keep_their_trail():
    old = applied(days_old=120)
    before = WebhookReceipt.objects.values().get(pk=old.pk)
    assert before["outcome"] == Outcome.APPLIED and before["escrow_id"] is not None
    size = len(bytes(old.body))

    report = prune("--older-than", "90d")
    assert (report["receipts_pruned"], report["bytes_freed"]) == (1, size)
    assert report["failed_batches"] == []

    after = WebhookReceipt.objects.values().get(pk=old.pk)
    assert bytes(after["body"]) == b""
    assert after["body_pruned_at"] is not None
    # The hash of what arrived survives and still matches the original bytes' hash.
    assert after["body_sha256"] == before["body_sha256"]
    assert after["body_sha256"] == hashlib.sha256(bytes(old.body)).hexdigest()
    unchanged = {k: v for k, v in before.items() if k not in ("body", "body_pruned_at")}
    assert {k: v for k, v in after.items() if k not in ("body", "body_pruned_at")} == unchanged
    assert after["body_size"] == size

    # A second run has nothing left to do.
    assert prune("--older-than", "90d")["receipts_pruned"] == 0


@pytest.mark.django_db
def test_recent_unfinished_and_flagged_receipts_are_kept():
    recent = applied(days_old=30)
    kept = [
        recent,
        with_outcome(Outcome.FAILED, 200, last_error="boom"),  # payments_retry needs it
        with_outcome(Outcome.RECEIVED, 200),  # a killed process left it: retry needs it
        with_outcome(Outcome.PARKED, 200, flagged=True),  # staff will read it
        with_outcome(Outcome.CONFLICT, 200, flagged=True),
    ]
    pruned = [
        applied(days_old=91),
        with_outcome(Outcome.DUPLICATE, 200),
        with_outcome(Outcome.RECORDED, 200),
        with_outcome(Outcome.PARKED, 200),  # resolved by staff: no longer flagged
        aged(delivery(signed=False), 200),  # unauthenticated: evidence, but final
    ]
    report = prune("--older-than", "90d", "--batch-size", "2")
    assert report["receipts_pruned"] == len(pruned)
    assert report["batches"] == 3
    for receipt in kept:
        body = WebhookReceipt.objects.values_list("body", "body_pruned_at").get(pk=receipt.pk)
        assert bytes(body[0]) == bytes(receipt.body) and body[1] is None, receipt.outcome
    for receipt in pruned:
        body = WebhookReceipt.objects.values_list("body", "body_pruned_at").get(pk=receipt.pk)
        assert bytes(body[0]) == b"" and body[1] is not None, receipt.outcome


@pytest.mark.django_db
def test_the_cutoff_is_the_age_asked_for():
    young, old = applied(days_old=6), applied(days_old=8)
    assert prune("--older-than", "1w")["receipts_pruned"] == 1
    young.refresh_from_db()
    old.refresh_from_db()
    assert (young.body_pruned_at, bool(bytes(young.body))) == (None, True)
    assert old.body_pruned_at is not None


@pytest.mark.django_db
def test_dry_run_reports_counts_and_bytes_and_writes_nothing():
    old = [applied(days_old=100) for _ in range(3)]
    with_outcome(Outcome.FAILED, 200)
    before = receipts()
    report = prune("--older-than", "90d", "--dry-run")
    assert report["dry_run"] is True
    assert report["receipts_pruned"] == 3
    assert report["bytes_freed"] == sum(len(bytes(r.body)) for r in old)
    assert receipts() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ninety days", "not a duration"),
        ("-5d", "not a duration"),
        ("", "not a duration"),
        ("90", "refusing to prune receipts younger than 1 day"),  # 90 seconds, a typo
        ("0d", "refusing to prune"),
    ],
)
def test_a_bad_older_than_is_a_clear_error_and_prunes_nothing(value, message):
    applied(days_old=200)
    before = receipts()
    with pytest.raises(CommandError, match=message):
        call_command("payments_prune", f"--older-than={value}", stdout=StringIO())
    assert receipts() == before


@pytest.mark.django_db
def test_a_failing_batch_is_reported_the_others_pruned_and_the_exit_code_says_so(
    monkeypatch, caplog
):
    old = [applied(days_old=100) for _ in range(4)]
    real_filter = pruning.WebhookReceipt.objects.filter
    updates = []

    def flaky_filter(*args, **kwargs):
        # The rows a batch updates are picked by pk alone; the second batch's fails,
        # after its rows were locked.
        if set(kwargs) == {"pk__in"}:
            updates.append(kwargs["pk__in"])
            if len(updates) == 2:
                raise RuntimeError("disk full")
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(pruning.WebhookReceipt.objects, "filter", flaky_filter)
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as info:
        call_command("payments_prune", "--json", "--batch-size", "2", stdout=out, stderr=err)
    assert info.value.returncode == 1
    report = json.loads(out.getvalue())
    assert report["receipts_pruned"] == 2
    [failed] = report["failed_batches"]
    assert failed["error"] == "RuntimeError: disk full"
    assert "Traceback" in failed["traceback"]
    assert any(r.exc_info for r in caplog.records if r.name == "payments.pruning")
    states = [
        WebhookReceipt.objects.filter(pk=r.pk, body_pruned_at__isnull=False).exists() for r in old
    ]
    assert states == [True, True, False, False]  # the failed batch rolled back whole


@pytest.mark.django_db
def test_plain_output():
    applied(days_old=100)
    out = StringIO()
    call_command("payments_prune", stdout=out)
    assert " 1 receipt(s) received before " in f" {out.getvalue()}"
    assert "pruned," in out.getvalue() and "0 batch(es) failed" in out.getvalue()
