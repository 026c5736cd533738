"""Our side of the provider's API: asking for deposits and pulling missed payments.

HTTP never runs inside a money transaction: each call happens first, and what it returned
is then written (or processed) in a short transaction of its own. Payments found by
reconciliation go through exactly the webhook path (a stored receipt, processed by
payments.services), so a webhook for the same payment arriving later is a duplicate.
"""

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from escrow.models import Escrow, EscrowStatus
from escrowsite.errors import ApplicationError, NotFound
from payments.client import DynoPayClient, ProviderError, ProviderPayment, encode_body
from payments.models import Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import PROVIDER, EventType
from payments.services import clean_headers, run_processing

logger = logging.getLogger(__name__)


def request_deposit(*, escrow_id: str, coin: str, client: DynoPayClient | None = None) -> Escrow:
    """Ask the provider for a deposit address for the escrow's total due and store it.

    Safe to repeat: the client's idempotency key returns the same provider payment.
    """
    escrow = Escrow.objects.filter(escrow_id=escrow_id).first()
    if escrow is None:
        raise NotFound(f"Escrow {escrow_id} does not exist.", {"escrow_id": escrow_id})
    if escrow.status not in (EscrowStatus.CREATED, EscrowStatus.PAYMENT_PENDING):
        raise ApplicationError(f"Escrow {escrow_id} is {escrow.status}; it takes no deposit.")
    created = (client or DynoPayClient()).create_payment(escrow_id, escrow.total_due, coin)
    with transaction.atomic(durable=True):
        escrow = Escrow.objects.select_for_update().get(pk=escrow.pk)
        escrow.provider = PROVIDER
        escrow.provider_payment_id = created.payment_id
        escrow.deposit_address = created.address
        escrow.save(update_fields=["provider", "provider_payment_id", "deposit_address"])
    return escrow


@dataclass
class ReconcileItem:
    escrow_id: str
    payment_id: str = ""
    tx_id: str = ""
    action: str = ""  # already_applied, applied, would_apply, not_confirmed, failed, error
    outcome: str = ""
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class ReconcileReport:
    items: list[ReconcileItem] = field(default_factory=list)

    @property
    def found(self) -> list[ReconcileItem]:
        return [i for i in self.items if i.action in ("applied", "would_apply")]

    @property
    def problems(self) -> list[ReconcileItem]:
        return [i for i in self.items if i.action in ("failed", "error")]


def reconcile_candidates(*, since: timedelta, escrow_ids: list[str] | None = None) -> list[str]:
    """Escrows awaiting payment, or cancelled/expired within `since` (a payment lost on
    its way could have let the expiry sweep close them)."""
    if escrow_ids:
        return list(
            Escrow.objects.filter(escrow_id__in=escrow_ids).values_list("escrow_id", flat=True)
        )
    cutoff = timezone.now() - since
    return list(
        Escrow.objects.filter(
            Q(status__in=[EscrowStatus.PAYMENT_PENDING, EscrowStatus.PARTIALLY_PAID])
            | Q(
                status__in=[EscrowStatus.CANCELLED, EscrowStatus.EXPIRED],
                status_changed_at__gte=cutoff,
            )
        )
        .order_by("pk")
        .values_list("escrow_id", flat=True)
    )


def _already_claimed(payment: ProviderPayment) -> bool:
    return PaymentEvent.objects.filter(
        provider=PROVIDER, tx_id=payment.tx_id, event=EventType.CONFIRMED
    ).exists()


def store_reconciled_receipt(payment: ProviderPayment) -> WebhookReceipt:
    """The provider's API read, stored as the webhook it should have been."""
    raw = encode_body(payment.to_webhook_body())
    with transaction.atomic(durable=True):
        return WebhookReceipt.objects.create(
            provider=PROVIDER,
            headers=clean_headers({"X-Reconciled-From": "provider-api"}),
            body=raw,
            body_size=len(raw),
            body_sha256=hashlib.sha256(raw).hexdigest(),
            # Trusted: we fetched it ourselves from the provider's authenticated API.
            signature_valid=True,
        )


def reconcile_escrow(
    escrow_id: str, *, client: DynoPayClient, dry_run: bool
) -> list[ReconcileItem]:
    """Every confirmed provider payment for one escrow that we have not applied is applied
    now (one durable transaction each) through the webhook processing path."""
    items = []
    for payment in client.list_payments(ref_id=escrow_id):
        item = ReconcileItem(escrow_id=escrow_id, payment_id=payment.id, tx_id=payment.tx_id)
        items.append(item)
        if payment.status != "confirmed" or not payment.tx_id:
            item.action = "not_confirmed"
            item.detail = f"provider status {payment.status}"
            continue
        if _already_claimed(payment):
            item.action = "already_applied"
            continue
        if dry_run:
            item.action = "would_apply"
            item.detail = f"{payment.base_amount} USD confirmed at the provider, missing here"
            continue
        receipt = store_reconciled_receipt(payment)
        response = run_processing(receipt_id=receipt.pk, source="reconcile")
        item.outcome = response.body["outcome"]
        item.detail = response.body.get("detail", "")
        if response.status >= 500:
            item.action = "failed"
        elif item.outcome == Outcome.DUPLICATE:
            # A webhook for it landed between our check and our processing: fine.
            item.action = "already_applied"
        else:
            item.action = "applied"
            logger.warning(
                "reconciliation applied a payment the webhook never delivered: %s %s (%s)",
                escrow_id,
                payment.tx_id,
                item.detail,
            )
    return items


def reconcile(
    *,
    since: timedelta = timedelta(days=7),
    escrow_ids: list[str] | None = None,
    dry_run: bool = False,
    client: DynoPayClient | None = None,
) -> ReconcileReport:
    """Compare candidates with the provider; a failure for one escrow never stops the rest."""
    client = client or DynoPayClient()
    report = ReconcileReport()
    for escrow_id in reconcile_candidates(since=since, escrow_ids=escrow_ids):
        try:
            report.items.extend(reconcile_escrow(escrow_id, client=client, dry_run=dry_run))
        except ProviderError as exc:
            # Recorded in the report (and the exit code); the next escrow still runs.
            logger.error("reconciliation of %s failed: %s", escrow_id, exc)
            report.items.append(ReconcileItem(escrow_id=escrow_id, action="error", detail=str(exc)))
    return report
