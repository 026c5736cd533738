"""Sending a webhook the way a provider does: signed, recorded, retried on 5xx."""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from typing import Any

from payments.client import format_time
from payments.signing import SIGNATURE_HEADER

logger = logging.getLogger("payments.sandbox")

# Enough of a receiver's answer to see its outcome, without storing a whole error page.
RECORDED_BODY_LIMIT = 4096


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: attempt n waits initial_delay * multiplier**(n-2)."""

    max_attempts: int = 5
    initial_delay: float = 1.0
    max_delay: float = 30.0
    multiplier: float = 2.0

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (the first waits nothing)."""
        if attempt <= 1:
            return 0.0
        return min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 2))


@dataclass(frozen=True)
class DeliveryAttempt:
    """One POST of a webhook and what came back (status None: no HTTP answer at all)."""

    number: int
    at: datetime
    status_code: int | None
    body: str
    error: str
    duration_ms: float

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        # A 4xx is the receiver saying "never": retrying would only repeat the refusal.
        return self.status_code is None or self.status_code >= 500

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": format_time(self.at),
            "status_code": self.status_code,
            "body": self.body,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 3),
        }


@dataclass
class WebhookDelivery:
    """A webhook body sent to one URL, with every attempt in order."""

    id: int
    url: str
    event: str
    payment_id: str
    body: bytes
    signature: str
    attempts: list[DeliveryAttempt] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].succeeded

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "event": self.event,
            "payment_id": self.payment_id,
            "body": self.body.decode(),
            "signature": self.signature,
            "delivered": self.delivered,
            "attempts": [attempt.to_json() for attempt in self.attempts],
        }


def post_webhook(
    url: str, body: bytes, signature: str, *, timeout: float, number: int = 1
) -> DeliveryAttempt:
    """POST `body` once with DynoPay's headers; transport failures become an attempt, not a raise.

    http.client rather than urllib: urllib follows a 302 by re-sending the POST as a GET.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL must be http(s)://host/…, got {url!r}")
    connection_class = HTTPSConnection if parts.scheme == "https" else HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "DynoPay-Sandbox/1.0",
        SIGNATURE_HEADER: signature,
    }
    started = time.monotonic()
    at = _now()
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        status: int | None = response.status
        text = response.read(RECORDED_BODY_LIMIT).decode("utf-8", "replace")
        error = ""
    except (OSError, HTTPException) as exc:
        status, text, error = None, "", f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return DeliveryAttempt(
        number=number,
        at=at,
        status_code=status,
        body=text,
        error=error,
        duration_ms=(time.monotonic() - started) * 1000,
    )


def deliver_webhook(
    delivery: WebhookDelivery,
    *,
    retry: RetryPolicy,
    timeout: float,
    stop: threading.Event | None = None,
    on_attempt: Callable[[WebhookDelivery], None] | None = None,
) -> WebhookDelivery:
    """Send until a 2xx, a non-retryable answer, max_attempts, or `stop` is set."""
    stop = stop or threading.Event()
    for number in range(1, retry.max_attempts + 1):
        if number > 1 and stop.wait(retry.delay_before(number)):
            break
        attempt = post_webhook(
            delivery.url, delivery.body, delivery.signature, timeout=timeout, number=number
        )
        delivery.attempts.append(attempt)
        if on_attempt:
            on_attempt(delivery)
        logger.info(
            "webhook %s %s attempt %d -> %s %s",
            delivery.event,
            delivery.payment_id,
            number,
            attempt.status_code,
            attempt.error,
        )
        if not attempt.retryable:
            break
    return delivery
