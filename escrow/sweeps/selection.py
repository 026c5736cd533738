"""Finding the work: candidate escrows by the database clock, and the result types."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Now

from escrow.models import Escrow
from escrow.sweeps.rules import (
    CHUNK,
    RULES,
    WARNINGS,
    DeadlineWarning,
    Result,
    Rule,
    _outbox_keys,
    warning_key,
)
from notifications.models import Notification
from payments.models import RETRYABLE_OUTCOMES, WebhookReceipt
from wallets.models import Account, AccountKind

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


class _BodyMentions(Func):
    """True when a raw body (bytes) contains a text: the SQL claim's
    `position(convert_to(...) IN body)`, for the ORM claim on either database."""

    output_field = BooleanField()

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, list[Any]]:
        body, text = (compiler.compile(e) for e in self.get_source_expressions())
        if connection.vendor == "postgresql":
            sql = f"position(convert_to({text[0]}, 'UTF8') IN {body[0]}) > 0"
            return sql, [*text[1], *body[1]]
        return f"instr({body[0]}, CAST({text[0]} AS BLOB)) > 0", [*body[1], *text[1]]


def claim_queryset(rule: Rule, escrow_pks: Sequence[int], *, lock: bool) -> QuerySet:
    """The claim statement's rows through the ORM: what the embedded SQLite of the demo
    runs (it has no `= ANY`, `convert_to` or row locks; its writers queue on the file
    lock instead). PostgreSQL runs the SQL above; a test holds the two equal there."""
    rows = Escrow.objects.filter(
        pk__in=list(escrow_pks), status=rule.status, **{f"{rule.deadline}__lte": Now()}
    ).annotate(db_now=Now())
    columns = ["id", "escrow_id", "status", rule.deadline, "db_now"]
    if rule.guard_payment:
        rows = rows.annotate(
            money_held=Exists(
                Account.objects.filter(
                    escrow_id=OuterRef("pk"), kind=AccountKind.ESCROW_HOLDING, balance__gt=0
                )
            ),
            payment_in_flight=Exists(
                WebhookReceipt.objects.filter(signature_valid=True, outcome__in=RETRYABLE_OUTCOMES)
                .annotate(mentions=_BodyMentions(F("body"), OuterRef("escrow_id")))
                .filter(
                    Q(escrow_id=OuterRef("pk"))
                    | Q(escrow_ref=OuterRef("escrow_id"))
                    | Q(mentions=True)
                )
            ),
        )
        columns += ["money_held", "payment_in_flight"]
    if lock:
        rows = rows.select_for_update(skip_locked=True, of=("self",))
    return rows.order_by("pk").values(*columns)


_CLAIM_SQL: dict[tuple[str, bool], str] = {
    (rule.status, lock): _claim_sql(rule, lock=lock) for rule in RULES for lock in (True, False)
}
# Rules whose escrows hold no money: they may be closed many per transaction.
BATCH_ACTIONS = frozenset({"cancel", "expire"})
BATCH_SIZE = 200


def _warnable_now(warning: DeadlineWarning, rows: QuerySet[Escrow]) -> QuerySet[Escrow]:
    """Rows inside the warning window: the lead time before the deadline has begun, and
    so has the second half of the window (when its start is recorded).

    "Half the window has passed" is written as "no more time is left than has elapsed"
    rather than as start + (deadline - start) / 2: the same instant, without dividing a
    duration, which the demo's SQLite cannot do.
    """
    lead = timedelta(hours=settings.ESCROW_WARN_BEFORE_HOURS)
    lead_begun = ExpressionWrapper(Now() + Value(lead), output_field=DateTimeField())
    return rows.alias(
        time_left=ExpressionWrapper(F(warning.deadline) - Now(), output_field=DurationField()),
        time_elapsed=ExpressionWrapper(
            Now() - F(warning.window_start), output_field=DurationField()
        ),
    ).filter(
        Q(**{f"{warning.window_start}__isnull": True}) | Q(time_left__lte=F("time_elapsed")),
        **{f"{warning.deadline}__lte": lead_begun},
    )


def _due(rule: Rule) -> QuerySet[Escrow]:
    return Escrow.objects.filter(status=rule.status, **{f"{rule.deadline}__lte": Now()})


def _warnable(warning: DeadlineWarning) -> QuerySet[Escrow]:
    upcoming = Escrow.objects.filter(
        status__in=warning.statuses, **{f"{warning.deadline}__gt": Now()}
    )
    return _warnable_now(warning, upcoming)


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
