"""Emptying a funded escrow's holding to the parties and platform revenue, and closing it."""

from datetime import datetime
from decimal import Decimal

from escrow.models import Escrow, HoldingStatus
from escrow.services.common import _holding, _record
from escrowsite.errors import ApplicationError
from wallets import ledger
from wallets.models import (
    AccountKind,
    TransactionType,
    Transfer,
    TransferKind,
)

# What a release or refund changes on the escrow row besides the money.
_CLOSED_FIELDS = ["status", "status_changed_at", "completed_at", "expires_at", "auto_release_at"]


def _close_funded(escrow: Escrow, now: datetime) -> None:
    """Save a funded escrow that was just paid out: completed, no deadline left running."""
    escrow.completed_at = now
    escrow.expires_at = None
    escrow.auto_release_at = None
    escrow.save(update_fields=_CLOSED_FIELDS)


def _payout(
    escrow: Escrow,
    *,
    to_buyer: Decimal,
    to_seller: Decimal,
    purpose: str,
    now: datetime,
    actor_id: int | None,
) -> list[Transfer]:
    """Empty the holding: the given shares to the parties, the rest to platform revenue.

    If the shares exceed what is held (an underpayment accepted within tolerance), the
    platform's revenue account tops the holding up first: the platform absorbs it.
    """
    holding = _holding(escrow)
    if holding.status not in (HoldingStatus.HELD, HoldingStatus.COLLECTING):
        raise ApplicationError(
            f"The holding of {escrow.escrow_id} is already {holding.status}.",
            {"escrow_id": escrow.escrow_id},
        )
    held = holding.account.balance
    revenue = ledger.system_account(kind=AccountKind.PLATFORM_REVENUE, currency=escrow.currency)
    remainder = held - to_buyer - to_seller
    wallet = ledger.customer_wallet
    moves = []  # (debit, credit, amount, kind, key suffix)
    if remainder < 0:
        moves.append(
            (revenue, holding.account, -remainder, TransferKind.FEE_SHORTFALL, "fee_shortfall")
        )
    if to_seller:
        seller = wallet(customer=escrow.seller_id, currency=escrow.currency)
        moves.append((holding.account, seller, to_seller, TransferKind.ESCROW_RELEASE, "seller"))
    if to_buyer:
        buyer = wallet(customer=escrow.buyer_id, currency=escrow.currency)
        moves.append((holding.account, buyer, to_buyer, TransferKind.ESCROW_REFUND, "buyer"))
    if remainder > 0:
        moves.append((holding.account, revenue, remainder, TransferKind.FEE, "fee"))
    base = f"escrow:{escrow.escrow_id}:{purpose}"
    legs = [
        ledger.Leg(debit, credit, amount, kind, f"{base}:{suffix}", escrow.pk, actor_id=actor_id)
        for debit, credit, amount, kind, suffix in moves
    ]
    transfers = ledger.post_transfers(legs)
    holding.status = {
        "release": HoldingStatus.RELEASED,
        "refund": HoldingStatus.REFUNDED,
        "split": HoldingStatus.SPLIT,
    }[purpose]
    holding.resolved_at = now
    holding.save(update_fields=["status", "resolved_at"])
    by_kind = {t.kind: t for t in transfers}
    if to_seller:
        _record(
            prefix="REL",
            escrow=escrow,
            type=TransactionType.ESCROW_RELEASE,
            customer_id=escrow.seller_id,
            amount=to_seller,
            transfers=[by_kind[TransferKind.ESCROW_RELEASE]],
            description=f"Release of {escrow.escrow_id} to the seller",
            now=now,
        )
    if to_buyer:
        _record(
            prefix="REF",
            escrow=escrow,
            type=TransactionType.ESCROW_REFUND,
            customer_id=escrow.buyer_id,
            amount=to_buyer,
            transfers=[by_kind[TransferKind.ESCROW_REFUND]],
            description=f"Refund of {escrow.escrow_id} to the buyer",
            now=now,
        )
    return transfers
