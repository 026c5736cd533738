"""Deadline sweeps: close, refund or release escrows whose deadline passed, and warn before.

Every deadline is compared with the database clock (`now()`), never the app server's, so
several hosts with drifting clocks agree on what is overdue. The sweep selects candidate
ids with a plain read, then handles each one in its own durable transaction that locks
the row with `SELECT ... FOR UPDATE SKIP LOCKED` and re-checks status and deadline under
that lock. So an escrow that changed since it was selected (paid, accepted, disputed) is
left alone, and of two sweeps running at once exactly one handles each escrow: the other
either skips the locked row or, once the first has committed, no longer finds it due.

The money-moving work is done by the escrow services (which lock the row again in the same
transaction); this module only decides which service applies and when.
"""

import logging
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, connections, transaction
from django.db.models import (
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    QuerySet,
    Value,
)
from django.db.models.functions import Greatest, Now

from escrow import services
from escrow.models import Escrow, EscrowStatus
from notifications.models import Channel, Notification
from notifications.services import enqueue_notification
from payments.models import RETRYABLE_OUTCOMES, WebhookReceipt
from wallets.models import Account, AccountKind

logger = logging.getLogger(__name__)

S = EscrowStatus
SOURCE = "sweep"
# Candidate ids are read in chunks of this size, so a huge backlog is never one query.
CHUNK = 1000


class Result:
    """What happened to one item of a sweep."""

    DONE = "done"  # the service ran and committed
    WOULD = "would"  # --dry-run: the service would run
    SKIPPED = "skipped"  # changed since selection, held by another sweep, or already warned
    HELD = "held"  # due, but refused: something about its money needs a human first
    FAILED = "failed"  # the service raised; rolled back, logged with its traceback


# --- the deadline table ----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Escrows in `status` whose `deadline` field has passed get `action`.

    `guard_payment` rules run while the buyer may still be paying: they refuse to act on
    an escrow whose payment is still being processed, so the sweep can never close an
    escrow whose payment is in flight or was lost on the way (a failed receipt).
    """

    action: str
    status: str
    to_status: str
    deadline: str
    reason: str
    guard_payment: bool = False


RULES: tuple[Rule, ...] = (
    Rule("cancel", S.CREATED, S.CANCELLED, "expires_at", "payment window passed", True),
    Rule(
        "expire",
        S.PAYMENT_PENDING,
        S.EXPIRED,
        "expires_at",
        "payment window passed without payment",
        True,
    ),
    # Money is held once partially paid: the only legal way out is a refund of what
    # arrived, to the buyer's wallet (escrow.transitions).
    Rule(
        "refund_partial",
        S.PARTIALLY_PAID,
        S.REFUNDED,
        "expires_at",
        "payment window passed with only part of the payment; refunded to the buyer's wallet",
        True,
    ),
    Rule(
        "refund_unaccepted",
        S.PAYMENT_CONFIRMED,
        S.REFUNDED,
        "expires_at",
        "the seller did not accept before the deadline",
    ),
    Rule(
        "auto_release",
        S.DELIVERED,
        S.COMPLETED,
        "auto_release_at",
        "auto-release time passed without a dispute",
    ),
)
RULE_FOR_STATUS: dict[str, Rule] = {rule.status: rule for rule in RULES}


def _apply(rule: Rule, *, escrow_id: str, now: datetime) -> Escrow:
    """Call the escrow service for `rule` (looked up at call time, so tests can patch it)."""
    common: dict[str, Any] = {"escrow_id": escrow_id, "now": now, "source": SOURCE}
    if rule.action == "cancel":
        return services.cancel_escrow(**common, reason=rule.reason)
    if rule.action == "expire":
        return services.expire_escrow(**common, reason=rule.reason)
    if rule.action == "refund_partial":
        return services.refund_escrow(
            **common, reason=rule.reason, allowed_from=(S.PARTIALLY_PAID,)
        )
    if rule.action == "refund_unaccepted":
        return services.decline_escrow(**common, reason=rule.reason)
    if rule.action == "auto_release":
        return services.release_escrow(**common, reason=rule.reason)
    raise ValueError(f"no service for sweep action {rule.action!r}")


@dataclass(frozen=True)
class DeadlineWarning:
    """Before `deadline`, tell `roles` once that it is coming.

    The warning goes out ESCROW_WARN_BEFORE_HOURS before the deadline, or halfway through
    the window (from `window_start`) if the window is shorter than twice that.
    """

    name: str
    statuses: tuple[str, ...]
    deadline: str
    window_start: str
    roles: tuple[str, ...]

    @property
    def event(self) -> str:
        return f"{self.name}_warning"


WARNINGS: tuple[DeadlineWarning, ...] = (
    DeadlineWarning(
        "payment_deadline",
        (S.CREATED, S.PAYMENT_PENDING, S.PARTIALLY_PAID),
        "expires_at",
        "created_at",
        ("buyer",),
    ),
    DeadlineWarning(
        "seller_response_deadline",
        (S.PAYMENT_CONFIRMED,),
        "expires_at",
        "payment_confirmed_at",
        ("seller",),
    ),
    # The buyer's last chance to open a dispute before the seller is paid.
    DeadlineWarning("auto_release", (S.DELIVERED,), "auto_release_at", "delivered_at", ("buyer",)),
)
WARNING_NAMED: dict[str, DeadlineWarning] = {warning.name: warning for warning in WARNINGS}


def warning_key(*, escrow_id: str, warning: DeadlineWarning, deadline: datetime, role: str) -> str:
    """The outbox key of one warning: one per escrow, deadline and recipient.

    The deadline is part of the key, so a deadline that moves (a new window) gets its
    own warning, and the same deadline is never warned about twice.
    """
    stamp = deadline.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{escrow_id}:{warning.event}:{stamp}:{role}"


def _outbox_keys(base_keys: Iterable[str]) -> list[str]:
    # enqueue_notification appends the channel; look for every channel that may exist.
    return [f"{key}:{channel}" for key in base_keys for channel in Channel.values]


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One escrow selected for one task (a rule's action or a warning), as selected."""

    pk: int
    escrow_id: str
    status: str
    deadline: datetime
    task: str
    is_warning: bool = False


@dataclass
class ItemResult:
    pk: int
    escrow_id: str
    task: str
    outcome: str
    from_status: str
    to_status: str = ""
    deadline: datetime | None = None
    detail: str = ""
    traceback: str = ""


@dataclass
class SweepReport:
    started_at: datetime
    dry_run: bool
    items: list[ItemResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    def having(self, outcome: str) -> list[ItemResult]:
        return [item for item in self.items if item.outcome == outcome]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            key = f"{item.task}:{item.outcome}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "dry_run": self.dry_run,
            "counts": {
                outcome: self.count(outcome)
                for outcome in (
                    Result.DONE,
                    Result.WOULD,
                    Result.SKIPPED,
                    Result.HELD,
                    Result.FAILED,
                )
            },
            "summary": self.summary(),
            "items": [asdict(item) for item in self.items],
        }


# --- selection -------------------------------------------------------------------------


def db_now() -> datetime:
    """The database's clock (the start of the current transaction, if one is open)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        return cursor.fetchone()[0]


def _claim_sql(rule: Rule, *, lock: bool) -> str:
    """One statement that locks (or, for a dry run, reads) the escrow if it is still due.

    Written as SQL once per rule rather than built by the ORM per item: building the
    query cost more than running it, at thousands of escrows a second. The deadline is
    compared with now(), the database clock.

    With `guard_payment`, two facts come back with it, read under the same lock:
    - money_held: its holding account holds money (wrong for an escrow awaiting its
      first payment: closing it would strand that money);
    - payment_in_flight: a signed delivery that is still unprocessed (received) or whose
      processing failed names this escrow, by link, by the reference read when it was
      stored, or (belt and braces, for a body only the full parser understands) anywhere
      in its raw body. Closing it would repeat the incident: the escrow whose payment was
      lost.
    """
    escrow = Escrow._meta.db_table
    guards = ""
    if rule.guard_payment:
        guards = f""",
            EXISTS (
                SELECT 1 FROM {Account._meta.db_table} a
                WHERE a.escrow_id = e.id AND a.kind = %(holding)s AND a.balance > 0
            ) AS money_held,
            EXISTS (
                SELECT 1 FROM {WebhookReceipt._meta.db_table} r
                WHERE r.signature_valid AND r.outcome = ANY(%(retryable)s)
                  AND (r.escrow_id = e.id OR r.escrow_ref = e.escrow_id
                       OR position(convert_to(e.escrow_id, 'UTF8') IN r.body) > 0)
            ) AS payment_in_flight"""
    return f"""
        SELECT e.id, e.escrow_id, e.status, e.{rule.deadline}, now() AS db_now{guards}
        FROM {escrow} e
        WHERE e.id = ANY(%(pks)s) AND e.status = %(status)s AND e.{rule.deadline} <= now()
        ORDER BY e.id
        {"FOR UPDATE OF e SKIP LOCKED" if lock else ""}
    """


_CLAIM_SQL: dict[tuple[str, bool], str] = {
    (rule.status, lock): _claim_sql(rule, lock=lock) for rule in RULES for lock in (True, False)
}
# Rules whose escrows hold no money: they may be closed many per transaction.
BATCH_ACTIONS = frozenset({"cancel", "expire"})
BATCH_SIZE = 200


def _warn_at(warning: DeadlineWarning) -> Greatest:
    lead = timedelta(hours=settings.ESCROW_WARN_BEFORE_HOURS)
    deadline = F(warning.deadline)
    half_window = ExpressionWrapper(
        (F(warning.deadline) - F(warning.window_start)) / 2, output_field=DurationField()
    )
    # GREATEST ignores NULLs in PostgreSQL: with no recorded window start, just the lead.
    return Greatest(
        ExpressionWrapper(deadline - Value(lead), output_field=DateTimeField()),
        ExpressionWrapper(deadline - half_window, output_field=DateTimeField()),
        output_field=DateTimeField(),
    )


def _due(rule: Rule) -> QuerySet[Escrow]:
    return Escrow.objects.filter(status=rule.status, **{f"{rule.deadline}__lte": Now()})


def _warnable(warning: DeadlineWarning) -> QuerySet[Escrow]:
    return (
        Escrow.objects.filter(status__in=warning.statuses, **{f"{warning.deadline}__gt": Now()})
        .alias(warn_at=_warn_at(warning))
        .filter(warn_at__lte=Now())
    )


def deadline_candidates(*, limit: int | None = None) -> list[Candidate]:
    """Escrows whose deadline has passed, oldest deadline first, at most `limit`."""
    found: list[Candidate] = []
    for rule in RULES:
        remaining = None if limit is None else limit - len(found)
        if remaining is not None and remaining <= 0:
            break
        rows = (
            _due(rule).order_by(rule.deadline, "pk").values_list("pk", "escrow_id", rule.deadline)
        )
        if remaining is not None:
            rows = rows[:remaining]
        found += [
            Candidate(pk, escrow_id, rule.status, deadline, rule.action)
            for pk, escrow_id, deadline in rows.iterator(chunk_size=CHUNK)
        ]
    return found


def warning_candidates(*, limit: int | None = None) -> list[Candidate]:
    """Escrows inside a warning window that have not been warned about that deadline."""
    if settings.ESCROW_WARN_BEFORE_HOURS <= 0:
        return []
    found: list[Candidate] = []
    for warning in WARNINGS:
        rows = list(
            _warnable(warning)
            .order_by(warning.deadline, "pk")
            .values_list("pk", "escrow_id", "status", warning.deadline)
        )
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            keys = {
                pk: [
                    warning_key(escrow_id=escrow_id, warning=warning, deadline=deadline, role=role)
                    for role in warning.roles
                ]
                for pk, escrow_id, _, deadline in chunk
            }
            sent = set(
                Notification.objects.filter(
                    key__in=_outbox_keys(k for ks in keys.values() for k in ks)
                ).values_list("key", flat=True)
            )
            for pk, escrow_id, status, deadline in chunk:
                if not sent.intersection(_outbox_keys(keys[pk])):
                    found.append(Candidate(pk, escrow_id, status, deadline, warning.name, True))
                    if limit is not None and len(found) >= limit:
                        return found
    return found


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


# --- the whole sweep -------------------------------------------------------------------


def plan_sweep(*, limit: int | None = None, warnings: bool = True) -> list[Candidate]:
    """Everything a sweep would look at now: overdue escrows, then warnings to send."""
    tasks = deadline_candidates(limit=limit)
    if warnings:
        tasks += warning_candidates(limit=limit)
    return tasks


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


def _handled(tasks: Sequence[Candidate], *, dry_run: bool, workers: int) -> Iterator[ItemResult]:
    """Each candidate's result, in completion order.

    With several workers, each is a thread with its own database connection (closed when
    it finishes): one item's commit waits on the WAL flush while another thread works,
    and PostgreSQL flushes the commits of concurrent sessions together. SKIP LOCKED and
    the re-check keep them apart exactly as they keep separate sweeps apart.
    """
    if workers <= 1 or len(tasks) <= 1:
        for candidate in tasks:
            yield run_item(candidate, dry_run=dry_run)
        return
    todo: queue.SimpleQueue[Candidate | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[ItemResult | BaseException] = queue.SimpleQueue()
    for candidate in tasks:
        todo.put(candidate)

    def work() -> None:
        try:
            while (candidate := todo.get()) is not None:
                done.put(run_item(candidate, dry_run=dry_run))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, re-raised
            done.put(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=work, name=f"escrow-sweep-{n}", daemon=True)
        for n in range(min(workers, len(tasks)))
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(len(tasks)):
            result = done.get()
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        # Whether all is done or the caller stopped early: drop what is left, let each
        # worker finish its current item, then stop it.
        while True:
            try:
                todo.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            todo.put(None)
        for thread in threads:
            thread.join()


def run_sweep(
    *,
    dry_run: bool = False,
    limit: int | None = None,
    warnings: bool = True,
    workers: int = 1,
    wrap: Callable[[Iterable[ItemResult], int], Iterable[ItemResult]] = lambda items, total: items,
    on_result: Callable[[ItemResult], None] | None = None,
) -> SweepReport:
    """Plan, then handle each candidate in its own transaction; never stops at a failure.

    `workers` > 1 handles items in that many threads (see _handled). `wrap` decorates
    the stream of results, given their number (a progress bar); `on_result` sees each
    result as it comes (output lines).
    """
    report = SweepReport(started_at=db_now(), dry_run=dry_run)
    tasks = plan_sweep(limit=limit, warnings=warnings)
    batchable = [
        c
        for c in tasks
        if not dry_run and not c.is_warning and RULE_FOR_STATUS[c.status].action in BATCH_ACTIONS
    ]
    taken = {id(c) for c in batchable}
    rest = [c for c in tasks if id(c) not in taken]

    def results() -> Iterator[ItemResult]:
        yield from _batched(batchable)
        yield from _handled(rest, dry_run=dry_run, workers=workers)

    for result in wrap(results(), len(tasks)):
        report.items.append(result)
        if on_result is not None:
            on_result(result)
    return report
