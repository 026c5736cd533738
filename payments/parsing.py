"""DynoPay webhook bodies parsed into a typed, validated value (or a clear error)."""

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils.dateparse import parse_datetime

from escrow.services import IncomingPayment
from wallets.money import USD, parse_decimal, quantize_usd

PROVIDER = "dynopay"


class EventType:
    PENDING = "payment.pending"
    CONFIRMED = "payment.confirmed"
    FAILED = "payment.failed"
    ALL = (PENDING, CONFIRMED, FAILED)


class MalformedPayload(ValueError):
    """The body is signed but unusable; the message says which field and why."""


# Larger than any real payment; keeps absurd numbers out of Decimal columns.
MAX_AMOUNT = Decimal("1e12")
# The finest unit of any coin we take (ETH has 18 decimals); also the column's scale.
MAX_PLACES = 18
# Transaction and payment ids longer than this cannot be real, and ids are built into
# idempotency and outbox keys that must fit their columns.
MAX_ID_LENGTH = 128


@dataclass(frozen=True)
class PaymentNotification:
    """One provider event about one payment. `base_amount` (USD) is authoritative."""

    event: str
    payment_id: str
    status: str
    tx_id: str
    base_amount: Decimal | None
    base_currency: str
    paid_amount: Decimal | None
    paid_currency: str
    escrow_ref: str
    created_at: datetime | None

    @property
    def dedupe_key(self) -> tuple[str, str, str]:
        return (PROVIDER, self.tx_id, self.event)

    @property
    def payload_hash(self) -> str:
        """Hash of the fields that decide what the event does to money, so a webhook, a
        reconciled API read and a staff entry of the same payment agree, and whitespace or
        key order never makes a "conflict". The provider's payment id is left out: staff
        confirming from blockchain evidence may not know it."""
        fields = {
            "event": self.event,
            "tx_id": self.tx_id,
            "base_amount": str(self.base_amount) if self.base_amount is not None else None,
            "base_currency": self.base_currency,
            "paid_amount": str(self.paid_amount.normalize())
            if self.paid_amount is not None
            else None,
            "paid_currency": self.paid_currency,
            "escrow_ref": self.escrow_ref,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def to_incoming_payment(self) -> IncomingPayment:
        assert self.base_amount is not None
        return IncomingPayment(
            provider=PROVIDER,
            tx_id=self.tx_id,
            usd_amount=self.base_amount,
            crypto_amount=self.paid_amount,
            crypto_currency=self.paid_currency,
            paid_at=self.created_at,
            provider_payment_id=self.payment_id,
        )

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, (Decimal, datetime)) else v) for k, v in data.items()}


def _reject_constant(name: str) -> None:
    raise MalformedPayload(f"JSON constant {name} is not allowed")


def load_json(body: bytes) -> dict[str, Any]:
    """Decode a JSON object; numbers become Decimal, never float."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayload("body is not UTF-8") from None
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # JSONDecodeError, and also the plain ValueError for integers past Python's
        # 4300-digit conversion limit.
        raise MalformedPayload("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayload("body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool, max_length: int = 200) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise MalformedPayload(f"{name} is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedPayload(f"{name} must be a string")
    value = str(value).strip()
    if required and not value:
        raise MalformedPayload(f"{name} is required")
    if len(value) > max_length:
        raise MalformedPayload(f"{name} is longer than {max_length} characters")
    if "\x00" in value:
        raise MalformedPayload(f"{name} contains a NUL character")
    if not is_storable(value):
        raise MalformedPayload(f"{name} is not valid Unicode text")
    return value


def is_storable(value: str) -> bool:
    """False for strings a database cannot store, such as JSON's lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _code(data: dict[str, Any], name: str, *, required: bool, max_length: int) -> str:
    """A currency or coin code: ASCII letters and digits, upper-cased, length-checked after."""
    value = _text(data, name, required=required, max_length=max_length).upper()
    if value and not (value.isascii() and value.isalnum() and len(value) <= max_length):
        raise MalformedPayload(f"{name} must be a code of letters and digits, got {value!r}")
    return value


def _amount(data: dict[str, Any], name: str, *, required: bool) -> Decimal | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise MalformedPayload(f"{name} is required")
        return None
    try:
        amount = parse_decimal(value)
    except ValueError as exc:
        raise MalformedPayload(f"{name}: {exc}") from None
    if amount < 0 or (required and amount == 0):
        raise MalformedPayload(f"{name} must be positive, got {value}")
    if amount >= MAX_AMOUNT:
        raise MalformedPayload(f"{name} is implausibly large: {value}")
    if not amount:
        return Decimal(0)  # also turns 0E-99999 into a zero the database can store
    if amount.normalize().as_tuple().exponent < -MAX_PLACES:
        raise MalformedPayload(f"{name} has more than {MAX_PLACES} decimal places: {value}")
    return amount


def parse_notification(body: bytes) -> PaymentNotification:
    """Parse and validate a DynoPay webhook body. Raises MalformedPayload."""
    data = load_json(body)
    event = _text(data, "event", required=True, max_length=64)
    if event not in EventType.ALL:
        raise MalformedPayload(f"event {event!r} is not one of {', '.join(EventType.ALL)}")
    confirmed = event == EventType.CONFIRMED
    payment_id = _text(data, "id", required=True, max_length=MAX_ID_LENGTH)
    # A pending or failed event may come before the chain has a transaction id; the
    # provider's payment id then keys it.
    tx_id = _text(data, "txId", required=confirmed, max_length=MAX_ID_LENGTH) or payment_id

    base_amount = _amount(data, "base_amount", required=confirmed)
    base_currency = _code(data, "base_currency", required=confirmed, max_length=8)
    if base_currency and base_currency != USD:
        raise MalformedPayload(f"base_currency must be {USD}, got {base_currency!r}")
    if base_amount is not None:
        # Cents are the ledger's unit; the raw value stays in the stored body.
        base_amount = quantize_usd(base_amount)
        if confirmed and base_amount <= 0:
            raise MalformedPayload("base_amount rounds to zero")

    meta = data.get("meta_data")
    if meta is not None and not isinstance(meta, dict):
        raise MalformedPayload("meta_data must be an object")
    escrow_ref = _text(meta or {}, "refId", required=False, max_length=64) or _text(
        data, "customer_reference", required=False, max_length=64
    )

    created_raw = data.get("created_at")
    created_at = None
    if created_raw not in (None, ""):
        if not isinstance(created_raw, str):
            raise MalformedPayload("created_at must be an ISO 8601 string")
        try:
            created_at = parse_datetime(created_raw.strip())
        except ValueError:
            created_at = None
        if created_at is None:
            raise MalformedPayload(f"created_at is not an ISO 8601 time: {created_raw!r}")
        if created_at.tzinfo is None:
            raise MalformedPayload("created_at must carry a time zone")

    return PaymentNotification(
        event=event,
        payment_id=payment_id,
        status=_text(data, "status", required=False, max_length=64),
        tx_id=tx_id,
        base_amount=base_amount,
        base_currency=base_currency or USD,
        paid_amount=_amount(data, "paid_amount", required=False),
        paid_currency=_code(data, "paid_currency", required=False, max_length=16),
        escrow_ref=escrow_ref,
        created_at=created_at,
    )
