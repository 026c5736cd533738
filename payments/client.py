"""DynoPay HTTP client: create and read payments, typed, with one error type for every failure."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from http.client import HTTPException
from typing import Any

from django.conf import settings
from django.utils.dateparse import parse_datetime

from escrowsite.errors import ApplicationError
from wallets.money import USD, parse_decimal

PAYMENT_STATUSES = ("pending", "confirmed", "failed")
# Error bodies are kept for diagnosis, not in full: a provider outage page can be huge.
ERROR_BODY_LIMIT = 2000


class ProviderError(ApplicationError):
    """The provider could not be reached or gave an unusable answer; nothing was done locally.

    `status_code` is the HTTP status, or None when there was no HTTP answer (timeout,
    connection refused). `retryable` says whether asking again later may succeed.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, {"status_code": status_code, **(extra or {})})
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code == 429 or self.status_code >= 500


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix, the way DynoPay writes times."""
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ProviderPayment:
    """A payment as the provider reports it; field names follow the webhook body.

    `to_webhook_body()` renders the exact body DynoPay would post for its current state, so
    reconciliation can push an API read through the same path as a webhook.
    """

    id: str
    status: str
    tx_id: str
    paid_amount: Decimal | None
    paid_currency: str
    base_amount: Decimal | None
    base_currency: str
    ref_id: str
    created_at: datetime
    updated_at: datetime
    # What was asked for at creation: the USD amount, coin, expected coin amount, address.
    amount_usd: Decimal
    coin: str
    crypto_amount: Decimal
    address: str

    @property
    def event(self) -> str:
        return f"payment.{self.status}"

    def to_webhook_body(self) -> dict[str, Any]:
        """The webhook JSON body for this state (amounts as decimal strings).

        `created_at` is when the payment was created at the provider, as in DynoPay's
        bodies, so rendering one state twice always gives the same body.
        """
        return {
            "event": self.event,
            "id": self.id,
            "status": self.status,
            "txId": self.tx_id,
            "paid_amount": _decimal_text(self.paid_amount),
            "paid_currency": self.paid_currency,
            "base_amount": _decimal_text(self.base_amount),
            "base_currency": self.base_currency,
            "meta_data": {"refId": self.ref_id},
            "created_at": format_time(self.created_at),
        }

    def to_api_json(self) -> dict[str, Any]:
        """The API representation: the webhook fields plus what was requested."""
        body = self.to_webhook_body()
        del body["event"]
        body.update(
            {
                "updated_at": format_time(self.updated_at),
                "amount": str(self.amount_usd),
                "currency": USD,
                "coin": self.coin,
                "crypto_amount": str(self.crypto_amount),
                "address": self.address,
            }
        )
        return body

    @classmethod
    def from_api_json(cls, data: Any) -> ProviderPayment:
        """Parse an API payment object. Raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError("payment must be a JSON object")
        status = _str(data, "status")
        if status not in PAYMENT_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(PAYMENT_STATUSES)}")
        meta = data.get("meta_data") or {}
        if not isinstance(meta, dict):
            raise ValueError("meta_data must be an object")
        return cls(
            id=_str(data, "id"),
            status=status,
            tx_id=_str(data, "txId", required=False),
            paid_amount=_amount(data, "paid_amount", required=False),
            paid_currency=_str(data, "paid_currency", required=False),
            base_amount=_amount(data, "base_amount", required=False),
            base_currency=_str(data, "base_currency", required=False) or USD,
            ref_id=_str(meta, "refId", required=False),
            created_at=_time(data, "created_at"),
            updated_at=_time(data, "updated_at"),
            amount_usd=_amount(data, "amount"),
            coin=_str(data, "coin"),
            crypto_amount=_amount(data, "crypto_amount"),
            address=_str(data, "address"),
        )


@dataclass(frozen=True)
class CreatedPayment:
    """A new payment request: where the buyer must send how much of which coin."""

    payment_id: str
    ref_id: str
    address: str
    coin: str
    amount_usd: Decimal
    crypto_amount: Decimal
    status: str
    created_at: datetime


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact JSON bytes; a signature covers exactly these bytes."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _str(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _amount(data: dict[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is missing")
        return None
    return parse_decimal(value)


def _time(data: dict[str, Any], name: str) -> datetime:
    raw = _str(data, name)
    parsed = parse_datetime(raw)
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(f"{name} is not an ISO 8601 time with a zone: {raw!r}")
    return parsed


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a GET; an API never redirects us anyway.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class DynoPayClient:
    """Talks to DynoPay's payment API with a Bearer API key. Every failure is a ProviderError."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.base_url = (base_url or settings.DYNOPAY_API_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else settings.DYNOPAY_API_KEY
        self.timeout = timeout if timeout is not None else settings.DYNOPAY_TIMEOUT_SECONDS
        self._opener = urllib.request.build_opener(_NoRedirect)

    def create_payment(
        self,
        escrow_id: str,
        amount_usd: Decimal,
        coin: str,
        *,
        idempotency_key: str | None = None,
    ) -> CreatedPayment:
        """Ask for a deposit address for `amount_usd` paid in `coin`, tagged with the escrow.

        The idempotency key (default: escrow, coin and amount) makes a retried request return
        the same payment instead of a second address for the same debt.
        """
        if not isinstance(amount_usd, Decimal):
            raise TypeError("amount_usd must be a Decimal")
        coin = coin.upper()
        key = idempotency_key or f"{escrow_id}:{coin}:{amount_usd}"
        data = self._request(
            "POST",
            "/v1/payments",
            body={"ref_id": escrow_id, "amount": str(amount_usd), "currency": USD, "coin": coin},
            headers={"Idempotency-Key": key},
        )
        payment = self._payment(data, "POST /v1/payments")
        return CreatedPayment(
            payment_id=payment.id,
            ref_id=payment.ref_id,
            address=payment.address,
            coin=payment.coin,
            amount_usd=payment.amount_usd,
            crypto_amount=payment.crypto_amount,
            status=payment.status,
            created_at=payment.created_at,
        )

    def get_payment(self, payment_id: str) -> ProviderPayment:
        """The provider's current view of one payment (404 is a ProviderError)."""
        path = "/v1/payments/" + urllib.parse.quote(payment_id, safe="")
        return self._payment(self._request("GET", path), f"GET {path}")

    def list_payments(
        self,
        ref_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
    ) -> list[ProviderPayment]:
        """Payments filtered by escrow, status and last change at or after `since`."""
        query: dict[str, str] = {}
        if ref_id:
            query["ref_id"] = ref_id
        if status:
            query["status"] = status
        if since is not None:
            if since.tzinfo is None:
                raise ValueError("since must be timezone-aware")
            query["since"] = format_time(since)
        path = "/v1/payments" + ("?" + urllib.parse.urlencode(query) if query else "")
        data = self._request("GET", path)
        items = data.get("payments")
        if not isinstance(items, list):
            raise ProviderError(f"GET {path}: answer has no payments list", status_code=200)
        return [self._payment(item, f"GET {path}") for item in items]

    def _payment(self, data: Any, what: str) -> ProviderPayment:
        try:
            return ProviderPayment.from_api_json(data)
        except ValueError as exc:
            raise ProviderError(
                f"{what}: unusable payment in answer: {exc}", status_code=200
            ) from exc

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        url = self.base_url + path
        request = urllib.request.Request(url, method=method, data=None)
        request.add_header("Authorization", f"Bearer {self.api_key}")
        request.add_header("Accept", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if body is not None:
            request.data = encode_body(body)
            request.add_header("Content-Type", "application/json")
        what = f"{method} {url}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
            raise ProviderError(
                f"{what}: HTTP {exc.code}: {_error_message(detail)}",
                status_code=exc.code,
                extra={"url": url, "body": detail},
            ) from exc
        except TimeoutError as exc:
            raise ProviderError(
                f"{what}: no answer within {self.timeout}s", extra={"url": url}
            ) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                message = f"no answer within {self.timeout}s"
            else:
                message = str(exc.reason)
            raise ProviderError(f"{what}: {message}", extra={"url": url}) from exc
        except (OSError, HTTPException) as exc:
            # Resets and truncated answers mid-read; HTTPException is not an OSError.
            raise ProviderError(f"{what}: {exc!r}", extra={"url": url}) from exc
        try:
            data = json.loads(raw, parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProviderError(
                f"{what}: answer is not JSON",
                status_code=status,
                extra={"url": url, "body": raw[:ERROR_BODY_LIMIT].decode("utf-8", "replace")},
            ) from exc
        if not isinstance(data, dict):
            raise ProviderError(f"{what}: answer is not a JSON object", status_code=status)
        return data


def _error_message(detail: str) -> str:
    """The provider's `error` text if the body is a JSON error, else the raw (capped) body."""
    try:
        data = json.loads(detail)
    except json.JSONDecodeError:
        return detail[:200]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return detail[:200]
