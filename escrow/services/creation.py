"""Creating escrows: ids, fees fixed at creation, the payment window."""

import re
import secrets
import string
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from escrow.fees import compute_fees
from escrow.models import Escrow, EscrowStatus, FeeSplit, StatusChange
from escrowsite.errors import ApplicationError
from wallets.models import (
    Customer,
)
from wallets.money import USD

ESCROW_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_escrow_id(*, now: datetime | None = None) -> str:
    """`ES` + MMDDYY + 4 random characters, e.g. ES101325WZY2."""
    now = now or timezone.now()
    suffix = "".join(secrets.choice(ESCROW_ID_ALPHABET) for _ in range(4))
    return f"ES{now:%m%d%y}{suffix}"


# --- creation ------------------------------------------------------------------------
ESCROW_ID_FORMAT = re.compile(r"ES\d{6}[A-Z0-9]{4}")
_ID_ATTEMPTS = 10
_DESCRIPTION_MAX = Escrow._meta.get_field("description").max_length


def _check_party(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ApplicationError(
            f"The {name} must be a Telegram user id (a positive integer).", {name: repr(value)}
        )


def create_escrow(
    *,
    buyer_id: int,
    seller_id: int,
    amount: Decimal,
    fee_split: str = FeeSplit.BUYER_PAYS,
    delivery_hours: int | None = None,
    escrow_id: str | None = None,
    description: str = "",
    now: datetime | None = None,
) -> Escrow:
    """A new escrow awaiting payment; it expires after the payment window.

    Unknown customers are created. A given `escrow_id` must have the public format and be
    unused; otherwise one is drawn, and drawn again on the rare collision.
    """
    _check_party("buyer", buyer_id)
    _check_party("seller", seller_id)
    if buyer_id == seller_id:
        raise ApplicationError("Buyer and seller must be different customers.")
    if delivery_hours is None:
        delivery_hours = settings.ESCROW_DEFAULT_DELIVERY_HOURS
    if (
        not isinstance(delivery_hours, int)
        or isinstance(delivery_hours, bool)
        or delivery_hours <= 0
    ):
        # 0 is refused, not quietly replaced by the default.
        raise ApplicationError(
            "Delivery hours must be a positive whole number.", {"delivery_hours": delivery_hours}
        )
    if escrow_id is not None and not ESCROW_ID_FORMAT.fullmatch(escrow_id):
        raise ApplicationError(
            f"{escrow_id!r} is not a valid escrow id (ES + MMDDYY + 4 letters or digits).",
            {"escrow_id": escrow_id},
        )
    if len(description) > _DESCRIPTION_MAX:
        raise ApplicationError(f"The description is longer than {_DESCRIPTION_MAX} characters.")
    fees = compute_fees(amount=amount, fee_split=fee_split)
    now = now or timezone.now()
    fields = {
        "buyer_id": buyer_id,
        "seller_id": seller_id,
        "amount": amount,
        "currency": USD,
        "fee_split": fee_split,
        "fee_amount": fees.fee_amount,
        "buyer_fee": fees.buyer_fee,
        "seller_fee": fees.seller_fee,
        "total_due": fees.total_due,
        "status": EscrowStatus.PAYMENT_PENDING,
        "delivery_hours": delivery_hours,
        "description": description,
        "expires_at": now + timedelta(minutes=settings.ESCROW_PAYMENT_WINDOW_MINUTES),
        "status_changed_at": now,
    }
    with transaction.atomic():
        Customer.objects.bulk_create(
            [Customer(telegram_id=buyer_id), Customer(telegram_id=seller_id)],
            ignore_conflicts=True,
        )
        escrow = _insert(fields, escrow_id=escrow_id, now=now)
        StatusChange.objects.create(
            escrow=escrow,
            from_status=EscrowStatus.CREATED,
            to_status=EscrowStatus.PAYMENT_PENDING,
            source="create",
        )
    return escrow


def _insert(fields: dict[str, object], *, escrow_id: str | None, now: datetime) -> Escrow:
    for _ in range(_ID_ATTEMPTS):
        candidate = escrow_id or new_escrow_id(now=now)
        try:
            with transaction.atomic():
                return Escrow.objects.create(escrow_id=candidate, **fields)
        except IntegrityError:
            # The insert waited for any concurrent holder of the id, so it is visible now;
            # if it is not, the error was something else and must not be hidden.
            if not Escrow.objects.filter(escrow_id=candidate).exists():
                raise
            if escrow_id is not None:
                raise ApplicationError(
                    f"Escrow {escrow_id} already exists.", {"escrow_id": escrow_id}
                ) from None
    raise ApplicationError("Could not allocate a unique escrow id; try again.")
