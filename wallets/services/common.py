"""What every adjustment service shares: audit action names, the outcome, the checks."""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from escrow.models import StaffAction
from escrowsite.errors import ApplicationError, NotFound
from wallets.models import AdjustmentRequest, Transaction, Transfer
from wallets.money import parse_decimal, quantize_usd

ACTION_ADJUSTED = "wallet_adjustment"
ACTION_REQUESTED = "wallet_adjustment_requested"
ACTION_APPROVED = "wallet_adjustment_approved"
ACTION_REJECTED = "wallet_adjustment_rejected"


@dataclass(frozen=True)
class AdjustmentOutcome:
    """What an adjustment did: `posted` (money moved) or `pending` (awaiting approval).

    `replayed` is true when an idempotency key matched an earlier adjustment and nothing
    new was written.
    """

    status: str
    customer_id: int
    amount: Decimal
    currency: str
    transfer: Transfer | None = None
    record: Transaction | None = None
    request: AdjustmentRequest | None = None
    staff_action: StaffAction | None = None
    balance: Decimal | None = None
    replayed: bool = False

    @property
    def posted(self) -> bool:
        return self.status == "posted"


# --- checks ----------------------------------------------------------------------------


def approval_threshold() -> Decimal:
    """Adjustments whose absolute amount exceeds this need a second staff member."""
    return parse_decimal(getattr(settings, "WALLET_ADJUSTMENT_APPROVAL_THRESHOLD", "100.00"))


def approval_window_hours() -> float:
    """How far back a staff member's own adjustments of a customer count with a new one."""
    return float(getattr(settings, "WALLET_ADJUSTMENT_APPROVAL_WINDOW_HOURS", 24.0))


def _check_amount(amount: object) -> Decimal:
    if not isinstance(amount, Decimal):
        raise ApplicationError(
            f"The amount must be a Decimal, got {type(amount).__name__}.",
            {"amount": str(amount)},
        )
    if not amount.is_finite() or amount == 0:
        raise ApplicationError("The amount must be a non-zero number.", {"amount": str(amount)})
    if quantize_usd(amount) != amount:
        raise ApplicationError(
            f"The amount {amount} has more precision than cents.", {"amount": str(amount)}
        )
    return amount


def _check_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ApplicationError("A reason is required for a wallet adjustment.")
    return reason


def _staff(actor_id: int) -> AbstractBaseUser:
    user = get_user_model().objects.filter(pk=actor_id).first()
    if user is None:
        raise NotFound(f"Staff user {actor_id} does not exist.", {"actor_id": actor_id})
    if not (user.is_active and user.is_staff):
        raise ApplicationError(
            f"User {user} is not active staff and cannot adjust wallets.",
            {"actor_id": actor_id},
        )
    return user


def _direction(amount: Decimal) -> str:
    return "credit" if amount > 0 else "debit"
