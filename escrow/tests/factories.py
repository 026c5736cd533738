"""Factories for escrows: built through the services so fees, totals and money agree."""

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from escrow import services
from escrow.models import Escrow, EscrowStatus
from wallets.money import quantize_usd
from wallets.tests.factories import CustomerFactory


def make_escrow(
    *,
    amount: Decimal = Decimal("92.13"),
    buyer_id: int | None = None,
    seller_id: int | None = None,
    **kwargs,
) -> Escrow:
    buyer_id = buyer_id or CustomerFactory().telegram_id
    seller_id = seller_id or CustomerFactory().telegram_id
    return services.create_escrow(buyer_id=buyer_id, seller_id=seller_id, amount=amount, **kwargs)


def make_payment(
    amount: Decimal, *, tx_id: str | None = None, provider: str = "dynopay", **kwargs
) -> services.IncomingPayment:
    """A provider-neutral payment with a fresh transaction id unless one is given."""
    return services.IncomingPayment(
        provider=provider, tx_id=tx_id or str(uuid.uuid4()), usd_amount=amount, **kwargs
    )


def pay(
    escrow: Escrow,
    amount: Decimal | None = None,
    *,
    now: datetime | None = None,
    **kwargs,
) -> services.PaymentOutcome:
    """Pay `amount` (default: exactly the total due) into the escrow through the service."""
    payment = make_payment(escrow.total_due if amount is None else amount, **kwargs)
    return services.confirm_payment(escrow_id=escrow.escrow_id, payment=payment, now=now)


def escrow_in_status(status: str, **kwargs) -> Escrow:
    """An escrow brought to `status` along the real lifecycle (created is set by hand,
    since no service leaves an escrow there)."""
    s = EscrowStatus
    escrow = make_escrow(**kwargs)
    eid = escrow.escrow_id
    if status == s.CREATED:
        Escrow.objects.filter(pk=escrow.pk).update(status=s.CREATED)
    elif status == s.PARTIALLY_PAID:
        pay(escrow, quantize_usd(escrow.total_due / 2))
    elif status == s.CANCELLED:
        services.cancel_escrow(escrow_id=eid)
    elif status == s.EXPIRED:
        services.expire_escrow(escrow_id=eid, now=escrow.expires_at + timedelta(seconds=1))
    elif status != s.PAYMENT_PENDING:
        pay(escrow)
        if status == s.REFUNDED:
            services.refund_escrow(escrow_id=eid)
        elif status != s.PAYMENT_CONFIRMED:
            services.accept_escrow(escrow_id=eid)
            if status in (s.DELIVERED, s.DISPUTED):
                services.mark_delivered(escrow_id=eid)
            if status == s.DISPUTED:
                services.open_dispute(escrow_id=eid, reason="not as described")
            elif status == s.COMPLETED:
                services.release_escrow(escrow_id=eid)
    escrow.refresh_from_db()
    assert escrow.status == status
    return escrow
