"""One item of a sweep: claim it under a row lock, re-check it, act (or warn)."""

import logging
import traceback
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models.functions import Now

from escrow import services
from escrow.models import Escrow
from escrow.sweeps.rules import (
    RULE_FOR_STATUS,
    RULES,
    SOURCE,
    WARNING_NAMED,
    DeadlineWarning,
    Result,
    Rule,
    S,
    _apply,
    _outbox_keys,
    warning_key,
)
from escrow.sweeps.selection import (
    _CLAIM_SQL,
    BATCH_ACTIONS,
    BATCH_SIZE,
    Candidate,
    ItemResult,
    _warnable,
    claim_queryset,
)
from notifications.models import Notification
from notifications.services import enqueue_notification
from payments.models import RETRYABLE_OUTCOMES
from wallets.models import AccountKind

# One logger for the whole sweep, as before it was a package (log filters, alerts).
logger = logging.getLogger("escrow.sweeps")

# --- one item --------------------------------------------------------------------------


def sweep_escrow(*, escrow_pk: int, expected_status: str, dry_run: bool = False) -> ItemResult:
    """Apply the deadline rule for `expected_status` to one escrow, if it still applies.

    In its own durable transaction: lock the row (skipping it if another sweep holds
    it), re-check under the lock that it is still in `expected_status` and past its
    deadline on the database clock, then call the service with the database's `now`.
    An escrow that changed since it was selected is skipped, never touched.
    """
    rule = RULE_FOR_STATUS[expected_status]
    if dry_run:
        # Same checks without a lock or a transaction: reports, writes nothing.
        return _decide(rule, escrow_pk, _claim(rule, escrow_pk, lock=False), dry_run=True)
    with transaction.atomic(durable=True):
        row = _claim(rule, escrow_pk, lock=True)
        return _decide(rule, escrow_pk, row, dry_run=False)


def _claim(rule: Rule, escrow_pk: int, *, lock: bool) -> dict[str, Any] | None:
    rows = _claim_many(rule, [escrow_pk], lock=lock)
    return rows[0] if rows else None


def _claim_many(rule: Rule, escrow_pks: Sequence[int], *, lock: bool) -> list[dict[str, Any]]:
    """The escrows among `escrow_pks` still due under `rule`, locked unless a dry run
    (skipping any another sweep holds), with their payment guards."""
    if connection.vendor != "postgresql":
        return list(claim_queryset(rule, escrow_pks, lock=lock))
    params = {
        "pks": list(escrow_pks),
        "status": rule.status,
        "holding": AccountKind.ESCROW_HOLDING.value,
        "retryable": [str(outcome) for outcome in RETRYABLE_OUTCOMES],
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL[rule.status, lock], params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def sweep_unpaid_batch(rule: Rule, candidates: Sequence[Candidate]) -> list[ItemResult]:
    """Close a batch of overdue unpaid escrows in one durable transaction.

    The same guarantees as one item at a time: every row is locked (SKIP LOCKED) and
    re-checked under the lock — still in its status, past its deadline on the database
    clock, no money held, no payment delivery in flight — and only those are closed, by
    escrow.services.close_unpaid_batch. The others are reported skipped or held.
    """
    with transaction.atomic(durable=True):
        rows = _claim_many(rule, [c.pk for c in candidates], lock=True)
        closable = [r for r in rows if not r["money_held"] and not r["payment_in_flight"]]
        if closable:
            services.close_unpaid_batch(
                escrow_pks=[r["id"] for r in closable],
                to_status=rule.to_status,
                now=closable[0]["db_now"],
                source=SOURCE,
                reason=rule.reason,
            )
    claimed = {row["id"]: row for row in rows}
    return [_decide(rule, c.pk, claimed.get(c.pk), dry_run=False, applied=True) for c in candidates]


def _batched(tasks: Sequence[Candidate]) -> Iterator[ItemResult]:
    """The batch path; a batch that fails is handled again one item at a time, so one
    bad escrow costs only its own failure and never stops the others."""
    for rule in RULES:
        if rule.action not in BATCH_ACTIONS:
            continue
        mine = [c for c in tasks if c.status == rule.status]
        for start in range(0, len(mine), BATCH_SIZE):
            batch = mine[start : start + BATCH_SIZE]
            try:
                results = sweep_unpaid_batch(rule, batch)
            except Exception as exc:  # noqa: BLE001 - logged; every item is then retried alone
                logger.warning(
                    "escrow_sweep: a batch of %d %s escrows failed (%s); one at a time",
                    len(batch),
                    rule.action,
                    exc,
                )
                results = [run_item(candidate) for candidate in batch]
            yield from results


def _decide(
    rule: Rule,
    escrow_pk: int,
    row: dict[str, Any] | None,
    *,
    dry_run: bool,
    applied: bool = False,
) -> ItemResult:
    """The result for one claimed escrow; calls the service unless `dry_run` or the
    service was already `applied` to it (the batch path)."""
    if row is None:
        escrow_id = Escrow.objects.filter(pk=escrow_pk).values_list("escrow_id", flat=True).first()
        return ItemResult(
            pk=escrow_pk,
            escrow_id=escrow_id or "?",
            task=rule.action,
            outcome=Result.SKIPPED,
            from_status=rule.status,
            detail="no longer due (changed since selected) or being handled by another sweep",
        )
    result = ItemResult(
        pk=escrow_pk,
        escrow_id=row["escrow_id"],
        task=rule.action,
        outcome=Result.WOULD if dry_run else Result.DONE,
        from_status=row["status"],
        to_status=rule.to_status,
        deadline=row[rule.deadline],
        detail=rule.reason,
    )
    if rule.guard_payment and rule.status != S.PARTIALLY_PAID and row["money_held"]:
        # Awaiting its first payment yet holding money: the database is inconsistent.
        # Closing it would strand that money, so a human looks first (wallets_check).
        result.outcome, result.to_status = Result.HELD, ""
        result.detail = f"{row['status']} but its holding account holds money; not closed"
    elif rule.guard_payment and row["payment_in_flight"]:
        result.outcome, result.to_status = Result.HELD, ""
        result.detail = (
            "a signed payment delivery for it is unprocessed or failed; not closed until "
            "payments_retry has applied it"
        )
    elif not dry_run and not applied:
        escrow = _apply(rule, escrow_id=row["escrow_id"], now=row["db_now"])
        result.to_status = escrow.status
    if result.outcome == Result.HELD and not dry_run:
        logger.warning("escrow_sweep: %s held: %s", result.escrow_id, result.detail)
    return result


def warn_escrow(*, escrow_pk: int, warning_name: str, dry_run: bool = False) -> ItemResult:
    """Enqueue one escrow's deadline warning, once, if it is still inside the window."""
    warning = WARNING_NAMED[warning_name]
    if dry_run:
        return _warn(warning, escrow_pk, dry_run=True)
    with transaction.atomic(durable=True):
        return _warn(warning, escrow_pk, dry_run=False)


def _warn(warning: DeadlineWarning, escrow_pk: int, *, dry_run: bool) -> ItemResult:
    rows = _warnable(warning).filter(pk=escrow_pk).annotate(db_now=Now())
    if not dry_run:
        rows = rows.select_for_update(skip_locked=True, of=("self",))
    row = rows.values("escrow_id", "status", "buyer_id", "seller_id", warning.deadline, "db_now")
    row = row.first()
    result = ItemResult(
        pk=escrow_pk,
        escrow_id=row["escrow_id"] if row else "?",
        task=f"warn:{warning.name}",
        outcome=Result.SKIPPED,
        from_status=row["status"] if row else "",
        deadline=row[warning.deadline] if row else None,
    )
    if row is None:
        result.detail = "no longer in its warning window or being handled by another sweep"
        return result
    deadline: datetime = row[warning.deadline]
    keys = {
        role: warning_key(escrow_id=row["escrow_id"], warning=warning, deadline=deadline, role=role)
        for role in warning.roles
    }
    # Under the row lock, so of two sweeps the second sees the first's committed rows.
    if Notification.objects.filter(key__in=_outbox_keys(keys.values())).exists():
        result.detail = "already warned about this deadline"
        return result
    result.outcome = Result.WOULD if dry_run else Result.DONE
    result.detail = f"{warning.event} to {', '.join(warning.roles)}"
    if dry_run:
        return result
    left = deadline - row["db_now"]
    for role, key in keys.items():
        recipient = row["buyer_id"] if role == "buyer" else row["seller_id"]
        enqueue_notification(
            event=warning.event,
            recipient_id=recipient,
            escrow_id=escrow_pk,
            key=key,
            payload={
                "event": warning.event,
                "escrow_id": row["escrow_id"],
                "status": row["status"],
                "recipient": recipient,
                "role": role,
                "deadline": deadline.isoformat(),
                "minutes_left": str(int(left.total_seconds() // 60)),
            },
        )
    return result


def run_item(candidate: Candidate, *, dry_run: bool = False) -> ItemResult:
    """Handle one candidate. A failure is logged with its traceback and returned as a
    failed result (its transaction rolled back), so the sweep goes on with the next."""
    try:
        if candidate.is_warning:
            return warn_escrow(escrow_pk=candidate.pk, warning_name=candidate.task, dry_run=dry_run)
        return sweep_escrow(
            escrow_pk=candidate.pk, expected_status=candidate.status, dry_run=dry_run
        )
    except Exception as exc:  # noqa: BLE001 - logged with traceback, reported, exit non-zero
        logger.error(
            "escrow_sweep: %s of escrow %s failed",
            candidate.task,
            candidate.escrow_id,
            exc_info=exc,
        )
        return ItemResult(
            pk=candidate.pk,
            escrow_id=candidate.escrow_id,
            task=candidate.task if not candidate.is_warning else f"warn:{candidate.task}",
            outcome=Result.FAILED,
            from_status=candidate.status,
            deadline=candidate.deadline,
            detail=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
