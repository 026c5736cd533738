"""Read-only selectors for the back-office work queues: what needs a person, and how much.

Each queue is a filtered queryset served by an index (the receipt log's partial
"needs work" index, the outbox's partial due index, the escrow status/deadline index) and
is counted with a cap, so the admin index never runs a full-table count however large
the ledger or the receipt log grows.
"""

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db.models import BinaryField, Q, QuerySet
from django.db.models.functions import Substr
from django.utils import timezone

from escrow.models import Escrow, EscrowStatus
from escrow.staff import DEADLINES
from notifications.models import Notification, NotificationStatus
from payments.models import Outcome, WebhookReceipt
from wallets.models import Account, AccountKind, AdjustmentRequest, AdjustmentStatus

S = EscrowStatus
# Counts above this show as "1000+": a queue that long is an outage, not a number to read.
COUNT_CAP = 1000
# How much of a raw body is read to find the escrow it names (DynoPay bodies are < 1 KB).
BODY_HEAD_BYTES = 4096
# Receipts left `received` longer than this by a killed process count as failed.
STUCK_AFTER = timedelta(minutes=5)
_REF_PATTERN = re.compile(rb'"(?:refId|customer_reference)"\s*:\s*"([^"\\]{1,64})"')
PROBLEM_OUTCOMES = (Outcome.FAILED, Outcome.RECEIVED, Outcome.PARKED, Outcome.CONFLICT)


# --- the queues ------------------------------------------------------------------------


def failed_deliveries(*, now: datetime | None = None) -> QuerySet[WebhookReceipt]:
    """Signed deliveries whose processing failed, or that a killed process left received."""
    cutoff = (now or timezone.now()) - STUCK_AFTER
    return WebhookReceipt.objects.filter(
        Q(outcome=Outcome.FAILED) | Q(outcome=Outcome.RECEIVED, received_at__lt=cutoff),
        signature_valid=True,
    )


def parked_deliveries() -> QuerySet[WebhookReceipt]:
    """Payments for no known escrow (money in suspense) and conflicting redeliveries."""
    return WebhookReceipt.objects.filter(
        outcome__in=[Outcome.PARKED, Outcome.CONFLICT], flagged=True
    )


def flagged_payments() -> QuerySet[WebhookReceipt]:
    """Applied payments flagged for a look: late or extra payments credited to the buyer's
    wallet, and underpayments accepted within tolerance."""
    return WebhookReceipt.objects.filter(outcome=Outcome.APPLIED, flagged=True)


def deadline_passed_q(*, now: datetime | None = None) -> Q:
    """Escrows with a running deadline that has passed (the sweep has not closed them)."""
    now = now or timezone.now()
    condition = Q(pk__in=[])
    for field, statuses in DEADLINES.items():
        condition |= Q(status__in=sorted(statuses), **{f"{field}__lt": now})
    return condition


def escrows_past_deadline(*, now: datetime | None = None) -> QuerySet[Escrow]:
    return Escrow.objects.filter(deadline_passed_q(now=now))


def failing_notifications() -> QuerySet[Notification]:
    """Outbox rows whose sending failed (and will be retried) or was given up."""
    return Notification.objects.filter(
        status__in=[NotificationStatus.FAILED, NotificationStatus.DEAD]
    )


def pending_adjustments() -> QuerySet[AdjustmentRequest]:
    """Wallet adjustments above the threshold waiting for a second staff member."""
    return AdjustmentRequest.objects.filter(status=AdjustmentStatus.PENDING)


def suspense_balances() -> list[tuple[str, Decimal]]:
    """Money held in suspense per currency (one row per currency; usually one)."""
    return list(
        Account.objects.filter(kind=AccountKind.SUSPENSE)
        .order_by("currency")
        .values_list("currency", "balance")
    )


def capped_count(queryset: QuerySet, cap: int = COUNT_CAP) -> int:
    """The number of rows, counting at most `cap + 1` (so it stays cheap on a huge table)."""
    return queryset.order_by()[: cap + 1].count()


@dataclass(frozen=True)
class QueueCount:
    key: str
    label: str
    help: str
    count: int | None
    display: str
    needs_attention: bool


QUEUES: tuple[tuple[str, str, str], ...] = (
    ("failed", "Failed deliveries", "Webhook deliveries that failed or got stuck; reprocess."),
    ("parked", "Parked deliveries", "Unknown escrow (money in suspense) or conflicting payloads."),
    (
        "late",
        "Late/extra payments",
        "Payments credited to a buyer's wallet or short within tolerance, flagged for a look.",
    ),
    ("suspense", "Suspense balance", "Money received for no known escrow."),
    (
        "deadline",
        "Escrows past a deadline",
        "A running deadline passed without the sweep closing the escrow.",
    ),
    ("notifications", "Notifications failing", "Outbox rows that failed or were given up."),
    (
        "adjustments",
        "Adjustments awaiting approval",
        "Wallet adjustments above the threshold; a second staff member approves them.",
    ),
)


def _show(count: int) -> str:
    return f"{COUNT_CAP}+" if count > COUNT_CAP else str(count)


def queue_counts(*, now: datetime | None = None) -> list[QueueCount]:
    """Every work queue with its (capped) size: a fixed number of queries."""
    now = now or timezone.now()
    counts = {
        "failed": capped_count(failed_deliveries(now=now)),
        "parked": capped_count(parked_deliveries()),
        "late": capped_count(flagged_payments()),
        "deadline": capped_count(escrows_past_deadline(now=now)),
        "notifications": capped_count(failing_notifications()),
        "adjustments": capped_count(pending_adjustments()),
    }
    suspense = [(currency, balance) for currency, balance in suspense_balances() if balance]
    result = []
    for key, label, help_text in QUEUES:
        if key == "suspense":
            display = ", ".join(f"{balance} {currency}" for currency, balance in suspense)
            result.append(
                QueueCount(key, label, help_text, None, display or "0.00", bool(suspense))
            )
        else:
            count = counts[key]
            result.append(QueueCount(key, label, help_text, count, _show(count), count > 0))
    return result


# --- deliveries that name an escrow they are not linked to -----------------------------
#
# A delivery whose processing failed was rolled back entirely, including the fields that
# link it to its escrow (escrow, escrow_ref), which were set inside that transaction. The
# escrow it was meant for is then only in the raw body. These helpers read it from there,
# for the few receipts in the "needs work" states, so the incident's failed delivery shows
# on ES101325WZY2's page and in the escrow list's "has failed deliveries" filter.


def claimed_escrow_ref(body: bytes) -> str:
    """The escrow reference a raw DynoPay body names, or "" (never raises)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        meta = data.get("meta_data")
        ref = (meta.get("refId") if isinstance(meta, dict) else None) or data.get(
            "customer_reference"
        )
        return ref.strip().upper() if isinstance(ref, str) else ""
    match = _REF_PATTERN.search(body)  # a truncated or malformed body
    return match.group(1).decode("utf-8", "replace").strip().upper() if match else ""


def with_body_head(queryset: QuerySet[WebhookReceipt]) -> QuerySet[WebhookReceipt]:
    """Defer the (up to 256 KB) body, traceback and headers; annotate the body's first KBs."""
    return queryset.defer("body", "traceback", "headers").annotate(
        body_head=Substr("body", 1, BODY_HEAD_BYTES, output_field=BinaryField())
    )


def unlinked_problem_refs(*, cap: int = 500) -> dict[str, list[int]]:
    """Escrow reference -> ids of failed/received receipts not linked to any escrow.

    At most `cap` receipts are read (the newest): the partial index keeps this cheap.
    """
    rows = (
        WebhookReceipt.objects.filter(
            outcome__in=[Outcome.FAILED, Outcome.RECEIVED],
            signature_valid=True,
            escrow__isnull=True,
        )
        .annotate(head=Substr("body", 1, BODY_HEAD_BYTES, output_field=BinaryField()))
        .order_by("-received_at", "-pk")
        .values_list("pk", "escrow_ref", "head")[:cap]
    )
    refs: dict[str, list[int]] = {}
    for pk, escrow_ref, head in rows:
        ref = escrow_ref or claimed_escrow_ref(bytes(head or b""))
        if ref:
            refs.setdefault(ref, []).append(pk)
    return refs


def escrows_with_delivery_problems_q() -> Q:
    """Escrows with a failed, stuck, parked or conflicting delivery (linked or named)."""
    linked = (
        WebhookReceipt.objects.filter(outcome__in=PROBLEM_OUTCOMES, escrow__isnull=False)
        .filter(~Q(outcome__in=[Outcome.PARKED, Outcome.CONFLICT]) | Q(flagged=True))
        .values("escrow_id")
    )
    named = list(unlinked_problem_refs())
    return Q(pk__in=linked) | Q(escrow_id__in=named)


def receipts_for_escrow_q(escrow: Escrow, extra_ids: Iterable[int] = ()) -> Q:
    return Q(escrow_id=escrow.pk) | Q(escrow_ref=escrow.escrow_id) | Q(pk__in=list(extra_ids))
