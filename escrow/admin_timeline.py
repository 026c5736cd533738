"""Read-only selectors for the escrow page: everything that happened to one escrow, capped.

Each section is one query (related rows joined, large columns deferred), newest first,
capped at `cap` rows with a flag saying whether there are more, so the page costs the
same number of queries for an escrow with three events or three thousand.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from escrow.admin_queues import receipts_for_escrow_q, unlinked_problem_refs, with_body_head
from escrow.models import Escrow, EscrowHolding, StaffAction, StatusChange
from notifications.models import Notification
from payments.models import WebhookReceipt
from wallets.models import Account, AccountKind, Transaction, Transfer

CAP = 50


@dataclass
class Section:
    rows: list[Any]
    more: bool


@dataclass(frozen=True)
class Event:
    at: datetime
    kind: str
    summary: str
    obj: Any = None


@dataclass
class EscrowTimeline:
    escrow: Escrow
    holding: EscrowHolding | None
    wallets: dict[str, Decimal | None]
    status_changes: Section
    receipts: Section
    transactions: Section
    transfers: Section
    notifications: Section
    staff_actions: Section
    events: list[Event] = field(default_factory=list)


def _capped(queryset, cap: int) -> Section:
    rows = list(queryset[: cap + 1])
    return Section(rows=rows[:cap], more=len(rows) > cap)


def _holding(escrow: Escrow) -> EscrowHolding | None:
    try:
        return escrow.holding
    except EscrowHolding.DoesNotExist:
        return None


def load_escrow(pk: int) -> Escrow | None:
    """The escrow with its parties and holding account joined (one query)."""
    return (
        Escrow.objects.select_related("buyer", "seller", "holding__account").filter(pk=pk).first()
    )


def escrow_timeline(escrow: Escrow, *, cap: int = CAP) -> EscrowTimeline:
    """All sections of the escrow page plus a merged, newest-first list of events."""
    balances = dict(
        Account.objects.filter(
            kind=AccountKind.CUSTOMER,
            customer_id__in=[escrow.buyer_id, escrow.seller_id],
            currency=escrow.currency,
        ).values_list("customer_id", "balance")
    )
    named = unlinked_problem_refs().get(escrow.escrow_id, [])
    timeline = EscrowTimeline(
        escrow=escrow,
        holding=_holding(escrow),
        wallets={"buyer": balances.get(escrow.buyer_id), "seller": balances.get(escrow.seller_id)},
        status_changes=_capped(
            StatusChange.objects.filter(escrow=escrow)
            .select_related("actor")
            .order_by("-at", "-pk"),
            cap,
        ),
        receipts=_capped(
            with_body_head(
                WebhookReceipt.objects.filter(receipts_for_escrow_q(escrow, named))
            ).order_by("-received_at", "-pk"),
            cap,
        ),
        transactions=_capped(
            Transaction.objects.filter(escrow=escrow).order_by("-created_at", "-pk"), cap
        ),
        transfers=_capped(
            Transfer.objects.filter(escrow=escrow)
            .select_related("debit_account", "credit_account", "actor")
            .order_by("-pk"),
            cap,
        ),
        notifications=_capped(
            Notification.objects.filter(escrow=escrow)
            .defer("payload")
            .order_by("-created_at", "-pk"),
            cap,
        ),
        staff_actions=_capped(
            StaffAction.objects.filter(escrow=escrow)
            .select_related("actor")
            .order_by("-at", "-pk"),
            cap,
        ),
    )
    for receipt in timeline.receipts.rows:
        receipt.body_text = bytes(receipt.body_head or b"").decode("utf-8", "replace")
    timeline.events = _merge(timeline)
    return timeline


def _who(user: Any) -> str:
    return user.get_username() if user is not None else ""


def _merge(t: EscrowTimeline) -> list[Event]:
    events = [Event(t.escrow.created_at, "created", f"escrow created, {t.escrow.total_due} due")]
    for c in t.status_changes.rows:
        who = _who(c.actor) or c.source
        why = f" — {c.reason}" if c.reason else ""
        events.append(Event(c.at, "status", f"{c.from_status} → {c.to_status} by {who}{why}", c))
    for r in t.receipts.rows:
        sig = "signed" if r.signature_valid else "UNSIGNED"
        error = f": {r.last_error}" if r.last_error else ""
        detail = f" — {r.detail}" if r.detail and not error else ""
        events.append(
            Event(
                r.received_at,
                "delivery",
                f"webhook #{r.pk} {r.event or '?'} ({sig}) → {r.outcome}{error}{detail}",
                r,
            )
        )
    for x in t.transactions.rows:
        events.append(
            Event(
                x.created_at,
                "transaction",
                f"{x.transaction_id} {x.type} {x.amount} {x.currency} ({x.status})",
                x,
            )
        )
    for tr in t.transfers.rows:
        events.append(
            Event(
                tr.created_at,
                "transfer",
                f"#{tr.pk} {tr.kind} {tr.amount} {tr.currency}: {tr.debit_account} → "
                f"{tr.credit_account}",
                tr,
            )
        )
    for n in t.notifications.rows:
        error = f": {n.last_error}" if n.last_error else ""
        events.append(
            Event(n.created_at, "notification", f"{n.event} via {n.channel} → {n.status}{error}", n)
        )
    for a in t.staff_actions.rows:
        events.append(Event(a.at, "staff", f"{a.action} by {_who(a.actor)} — {a.reason}", a))
    events.sort(key=lambda e: e.at, reverse=True)
    return events
