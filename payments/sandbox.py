"""A DynoPay stand-in on 127.0.0.1: the client's API in memory, plus signed webhooks on demand.

Tests start it in-process (`DynoPaySandbox(...).start()` on port 0, or the `dynopay_sandbox`
fixture in payments/tests/sandbox_fixtures.py); `manage.py payments_sandbox` runs it for the
local demo so nothing needs the real provider.

HTTP API (JSON bodies; amounts are decimal strings; times ISO 8601 UTC with a Z)
-------------------------------------------------------------------------------
Every route except /health needs `Authorization: Bearer <api key>` (else 401).

Provider API (what DynoPayClient calls)
  POST /v1/payments            {"ref_id": "ES…", "amount": "96.74", "currency": "USD",
                                "coin": "LTC"}; optional header Idempotency-Key.
                               201 with a payment; the same key and body again answer 200
                               with the same payment, the same key with another body 409.
  GET  /v1/payments/<id>       200 payment, 404 {"error": …}.
  GET  /v1/payments?ref_id=&status=&since=
                               200 {"payments": [payment, …]} oldest first; `since` keeps
                               payments whose state changed at or after that time.
  A payment: {"id", "status" (pending|confirmed|failed), "txId", "paid_amount",
  "paid_currency", "base_amount", "base_currency", "meta_data": {"refId"}, "created_at",
  "updated_at", "amount" (USD asked), "currency", "coin", "crypto_amount" (coin asked, at
  the sandbox's fixed RATES), "address"}.

Sandbox control (not part of DynoPay)
  POST /sandbox/payments/<id>/events
        {"status": "confirmed", "base_amount": "101.00", "paid_amount": "0.9187",
         "coin": "LTC", "txId": "…", "deliver": true}
        Sets the payment's state (any status may follow any other, so tests can replay
        out-of-order providers), then, unless "deliver" is false, POSTs the webhook body
        DynoPay would send, signed (X-DynoPay-Signature), to the webhook URL, retrying on 5xx
        and connection errors with exponential backoff, never on 2xx/3xx/4xx.
        Defaults keep what the payment already shows (a confirmation after a pending
        event repeats its amounts and txId); otherwise base_amount = amount asked,
        paid_amount = base_amount at RATES[coin], coin = coin asked, txId = a new uuid4
        (failed: none).
        200 {"payment": payment, "webhook": delivery or null}. 409 when delivering without
        a webhook URL or secret (the payment is then left unchanged).
  POST /sandbox/payments/<id>/resend
        Posts the payment's last webhook body again, byte for byte (a provider retry).
        200 {"webhook": delivery}; 404 when nothing was sent for it yet.
  GET  /sandbox/deliveries     200 {"deliveries": [delivery, …]} in order. A delivery:
        {"id", "url", "event", "payment_id", "body" (the exact text sent), "signature",
         "delivered", "attempts": [{"number", "at", "status_code" (null: no HTTP answer),
         "body", "error", "duration_ms"}]}.
  POST /sandbox/faults         {"count": 1, "delay_seconds": 0, "status": 503, "body": "…"}:
        the next `count` /v1 requests wait `delay_seconds`, then, if `status` is given,
        answer it with `body` (default a JSON error) instead of the real answer.
        200 {"faults": n pending}.
  POST /sandbox/reset          Forget payments, deliveries and faults. 200 {"ok": true}.
  GET  /health                 200 {"ok": true} (no auth).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from http import HTTPStatus
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils.dateparse import parse_datetime

from payments.client import PAYMENT_STATUSES, ProviderPayment, encode_body, format_time
from payments.signing import SIGNATURE_HEADER, sign
from wallets.money import USD, parse_decimal

logger = logging.getLogger(__name__)

# Fixed USD prices so expected coin amounts are reproducible (LTC matches the incident:
# 101.00 USD is 0.9187 LTC).
RATES: dict[str, Decimal] = {
    "BTC": Decimal("60000.00"),
    "ETH": Decimal("3000.00"),
    "LTC": Decimal("109.94"),
    "BCH": Decimal("400.00"),
    "DOGE": Decimal("0.15"),
    "TRX": Decimal("0.12"),
    "USDT": Decimal("1.00"),
    "USDC": Decimal("1.00"),
}
ADDRESS_PREFIX = {"BTC": "bc1q", "LTC": "ltc1q", "BCH": "qq", "DOGE": "D", "TRX": "T"}
COIN_PLACES = Decimal("0.00000001")
MAX_REQUEST_BYTES = 64 * 1024
# Enough of a receiver's answer to see its outcome, without storing a whole error page.
RECORDED_BODY_LIMIT = 4096


def crypto_amount(usd: Decimal, coin: str) -> Decimal:
    """`usd` in `coin` at the sandbox's fixed rate, to 8 places."""
    return (usd / RATES[coin]).quantize(COIN_PLACES, rounding=ROUND_HALF_UP)


def _address(coin: str) -> str:
    if coin in ("ETH", "USDT", "USDC"):
        return "0x" + secrets.token_hex(20)
    return ADDRESS_PREFIX.get(coin, "sbx") + secrets.token_hex(16)


def _now() -> datetime:
    return datetime.now(UTC)


# --- webhook delivery ------------------------------------------------------------------


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


# --- the sandbox -----------------------------------------------------------------------


class SandboxError(Exception):
    """A request the sandbox refuses: answered with `status` and a JSON error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Fault:
    remaining: int
    delay_seconds: float
    status: int | None
    body: str | None


class DynoPaySandbox:
    """The in-memory provider. Thread-safe: the HTTP server handles requests concurrently."""

    def __init__(
        self,
        *,
        api_key: str,
        webhook_url: str = "",
        webhook_secret: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        retry: RetryPolicy | None = None,
        webhook_timeout: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("the sandbox needs an API key (clients must present one)")
        self.api_key = api_key
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.retry = retry or RetryPolicy()
        self.webhook_timeout = webhook_timeout
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._payments: dict[str, ProviderPayment] = {}
        self._idempotency: dict[str, tuple[tuple[str, str, str], str]] = {}
        self._deliveries: list[WebhookDelivery] = []
        self._faults: list[_Fault] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._serving = False

    # lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def bind(self) -> str:
        """Open the listening socket (port 0 picks a free one) and return the base URL."""
        self._stop.clear()
        self._server = _SandboxHTTPServer((self._host, self._port), _Handler, self)
        return self.url

    def start(self) -> str:
        """Serve in a background thread; returns the base URL."""
        url = self.bind()
        self._serving = True
        self._thread = threading.Thread(
            target=self.serve_forever, name="dynopay-sandbox", daemon=True
        )
        self._thread.start()
        return url

    def serve_forever(self) -> None:
        """Serve on the bound socket in this thread until stop() (or KeyboardInterrupt)."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._serving = True
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        """Stop serving and release the port; also cuts short backoff waits and fault delays."""
        self._stop.set()
        server, self._server = self._server, None
        if server is None:
            return
        if self._serving:
            # shutdown() waits for serve_forever to notice; it would wait forever if the
            # loop never ran, hence the flag.
            server.shutdown()
            self._serving = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        server.server_close()

    def __enter__(self) -> DynoPaySandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # state

    @property
    def payments(self) -> list[ProviderPayment]:
        with self._lock:
            return sorted(self._payments.values(), key=lambda p: p.created_at)

    @property
    def deliveries(self) -> list[WebhookDelivery]:
        with self._lock:
            return list(self._deliveries)

    def reset(self) -> None:
        with self._lock:
            self._payments.clear()
            self._idempotency.clear()
            self._deliveries.clear()
            self._faults.clear()

    def add_fault(
        self,
        *,
        count: int = 1,
        delay_seconds: float = 0.0,
        status: int | None = None,
        body: str | None = None,
    ) -> int:
        """Make the next `count` /v1 requests slow and/or fail; returns faults pending."""
        if count < 1 or delay_seconds < 0 or (status is not None and not 100 <= status <= 599):
            raise SandboxError(400, "count >= 1, delay_seconds >= 0, status 100..599")
        with self._lock:
            self._faults.append(_Fault(count, delay_seconds, status, body))
            return sum(f.remaining for f in self._faults)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.pop(0)
            return fault

    # provider operations

    def create_payment(
        self, *, ref_id: str, amount: Decimal, coin: str, idempotency_key: str = ""
    ) -> tuple[ProviderPayment, bool]:
        """Returns the payment and whether it is new (False: an idempotent replay)."""
        coin = coin.upper()
        if not ref_id or len(ref_id) > 64:
            raise SandboxError(400, "ref_id is required (at most 64 characters)")
        if coin not in RATES:
            raise SandboxError(400, f"unsupported coin {coin!r}; one of {', '.join(RATES)}")
        if amount <= 0:
            raise SandboxError(400, "amount must be positive")
        fingerprint = (ref_id, str(amount), coin)
        with self._lock:
            if idempotency_key in self._idempotency:
                seen, payment_id = self._idempotency[idempotency_key]
                if seen != fingerprint:
                    raise SandboxError(409, "Idempotency-Key reused with a different request")
                return self._payments[payment_id], False
            now = _now()
            payment = ProviderPayment(
                id="pay_" + uuid.uuid4().hex,
                status="pending",
                tx_id="",
                paid_amount=None,
                paid_currency="",
                base_amount=None,
                base_currency=USD,
                ref_id=ref_id,
                created_at=now,
                updated_at=now,
                amount_usd=amount,
                coin=coin,
                crypto_amount=crypto_amount(amount, coin),
                address=_address(coin),
            )
            self._payments[payment.id] = payment
            if idempotency_key:
                self._idempotency[idempotency_key] = (fingerprint, payment.id)
            return payment, True

    def get_payment(self, payment_id: str) -> ProviderPayment:
        with self._lock:
            payment = self._payments.get(payment_id)
        if payment is None:
            raise SandboxError(404, f"no payment {payment_id!r}")
        return payment

    def list_payments(
        self, *, ref_id: str = "", status: str = "", since: datetime | None = None
    ) -> list[ProviderPayment]:
        return [
            p
            for p in self.payments
            if (not ref_id or p.ref_id == ref_id)
            and (not status or p.status == status)
            and (since is None or p.updated_at >= since)
        ]

    # sandbox control

    def mark_payment(
        self,
        payment_id: str,
        *,
        status: str,
        base_amount: Decimal | None = None,
        paid_amount: Decimal | None = None,
        coin: str | None = None,
        tx_id: str | None = None,
        deliver: bool = True,
    ) -> tuple[ProviderPayment, WebhookDelivery | None]:
        """Move a payment to `status` and (by default) send its signed webhook."""
        if status not in PAYMENT_STATUSES:
            raise SandboxError(400, f"status must be one of {', '.join(PAYMENT_STATUSES)}")
        current = self.get_payment(payment_id)
        # Unless told otherwise, a payment keeps what was already seen on chain for it.
        coin = (coin or current.paid_currency or current.coin).upper()
        if status == "failed":
            tx = tx_id if tx_id is not None else current.tx_id
            base_amount = base_amount if base_amount is not None else current.base_amount
            paid_amount = paid_amount if paid_amount is not None else current.paid_amount
        else:
            if base_amount is None:
                base_amount = (
                    current.base_amount if current.base_amount is not None else current.amount_usd
                )
            if paid_amount is None:
                if (
                    current.paid_amount is not None
                    and base_amount == current.base_amount
                    and coin == current.paid_currency
                ):
                    paid_amount = current.paid_amount
                elif coin in RATES:
                    paid_amount = crypto_amount(base_amount, coin)
                else:
                    raise SandboxError(400, f"no rate for {coin!r}: give paid_amount")
            tx = tx_id or current.tx_id or str(uuid.uuid4())
        for name, value in (("base_amount", base_amount), ("paid_amount", paid_amount)):
            if value is not None and value <= 0:
                raise SandboxError(400, f"{name} must be positive")
        if deliver:
            self._check_can_deliver()
        with self._lock:
            payment = replace(
                self._payments[payment_id],
                status=status,
                tx_id=tx,
                base_amount=base_amount,
                paid_amount=paid_amount,
                paid_currency=coin if paid_amount is not None else "",
                updated_at=_now(),
            )
            self._payments[payment_id] = payment
        if not deliver:
            return payment, None
        return payment, self._send(
            payment.event, payment.id, encode_body(payment.to_webhook_body())
        )

    def resend(self, payment_id: str) -> WebhookDelivery:
        """Send the payment's last webhook body again, byte for byte."""
        self.get_payment(payment_id)
        self._check_can_deliver()
        with self._lock:
            previous = [d for d in self._deliveries if d.payment_id == payment_id]
        if not previous:
            raise SandboxError(404, f"no webhook was sent for {payment_id!r} yet")
        last = previous[-1]
        return self._send(last.event, payment_id, last.body)

    def _check_can_deliver(self) -> None:
        if not self.webhook_url or not self.webhook_secret:
            raise SandboxError(409, "no webhook URL or secret configured; use deliver=false")

    def _send(self, event: str, payment_id: str, body: bytes) -> WebhookDelivery:
        with self._lock:
            delivery = WebhookDelivery(
                id=len(self._deliveries) + 1,
                url=self.webhook_url,
                event=event,
                payment_id=payment_id,
                body=body,
                signature=sign(body, self.webhook_secret),
            )
            self._deliveries.append(delivery)
        return deliver_webhook(
            delivery, retry=self.retry, timeout=self.webhook_timeout, stop=self._stop
        )

    def wait_or_stopped(self, seconds: float) -> bool:
        """Sleep that stop() interrupts; True if stopped."""
        return self._stop.wait(seconds)


# --- HTTP ------------------------------------------------------------------------------


class _SandboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests restart sandboxes quickly; do not wait out TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        sandbox: DynoPaySandbox,
    ) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)


_PAYMENT = re.compile(r"^/v1/payments/(?P<id>[^/]+)$")
_EVENTS = re.compile(r"^/sandbox/payments/(?P<id>[^/]+)/events$")
_RESEND = re.compile(r"^/sandbox/payments/(?P<id>[^/]+)/resend$")


class _Handler(BaseHTTPRequestHandler):
    server: _SandboxHTTPServer
    server_version = "DynoPaySandbox/1.0"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        sandbox = self.server.sandbox
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path
        try:
            body = self._read_body()
            if path == "/health" and method == "GET":
                self._send(200, {"ok": True})
                return
            self._authenticate(sandbox)
            if path.startswith("/v1/"):
                fault = sandbox._take_fault()
                if fault is not None:
                    if sandbox.wait_or_stopped(fault.delay_seconds):
                        return
                    if fault.status is not None:
                        self._send_fault(fault)
                        return
            status, answer = self._route(sandbox, method, path, parts.query, body)
            self._send(status, answer)
        except SandboxError as exc:
            self._send(exc.status, {"error": exc.message})
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away during %s %s", method, self.path)
        except Exception as exc:
            # A sandbox bug: say so loudly to the caller rather than drop the connection.
            logger.exception("sandbox failed on %s %s", method, self.path)
            self._send(500, {"error": f"sandbox bug: {exc!r}"})

    def _route(
        self, sandbox: DynoPaySandbox, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if path == "/v1/payments" and method == "POST":
            data = _json(body)
            currency = str(data.get("currency") or USD).upper()
            if currency != USD:
                raise SandboxError(400, "currency must be USD")
            payment, new = sandbox.create_payment(
                ref_id=_text(data, "ref_id"),
                amount=_decimal(data, "amount"),
                coin=_text(data, "coin"),
                idempotency_key=self.headers.get("Idempotency-Key", ""),
            )
            return (201 if new else 200), payment.to_api_json()
        if path == "/v1/payments" and method == "GET":
            params = dict(urllib.parse.parse_qsl(query))
            status = params.get("status", "")
            if status and status not in PAYMENT_STATUSES:
                raise SandboxError(400, f"status must be one of {', '.join(PAYMENT_STATUSES)}")
            since = None
            if params.get("since"):
                since = parse_datetime(params["since"])
                if since is None or since.tzinfo is None:
                    raise SandboxError(400, "since must be an ISO 8601 time with a zone")
            payments = sandbox.list_payments(
                ref_id=params.get("ref_id", ""), status=status, since=since
            )
            return 200, {"payments": [p.to_api_json() for p in payments]}
        if (match := _PAYMENT.match(path)) and method == "GET":
            return 200, sandbox.get_payment(urllib.parse.unquote(match["id"])).to_api_json()
        if (match := _EVENTS.match(path)) and method == "POST":
            data = _json(body)
            payment, delivery = sandbox.mark_payment(
                urllib.parse.unquote(match["id"]),
                status=_text(data, "status"),
                base_amount=_decimal(data, "base_amount", required=False),
                paid_amount=_decimal(data, "paid_amount", required=False),
                coin=_text(data, "coin", required=False) or None,
                tx_id=_text(data, "txId", required=False) or None,
                deliver=_bool(data, "deliver", default=True),
            )
            return 200, {
                "payment": payment.to_api_json(),
                "webhook": delivery.to_json() if delivery else None,
            }
        if (match := _RESEND.match(path)) and method == "POST":
            delivery = sandbox.resend(urllib.parse.unquote(match["id"]))
            return 200, {"webhook": delivery.to_json()}
        if path == "/sandbox/deliveries" and method == "GET":
            return 200, {"deliveries": [d.to_json() for d in sandbox.deliveries]}
        if path == "/sandbox/faults" and method == "POST":
            data = _json(body)
            status = data.get("status")
            fault_body = data.get("body")
            count = data.get("count", 1)
            if (
                (status is not None and not isinstance(status, int))
                or (fault_body is not None and not isinstance(fault_body, str))
                or not isinstance(count, int)
            ):
                raise SandboxError(400, "status and count must be integers, body a string")
            pending = sandbox.add_fault(
                count=count,
                delay_seconds=float(_decimal(data, "delay_seconds", required=False) or 0),
                status=status,
                body=fault_body,
            )
            return 200, {"faults": pending}
        if path == "/sandbox/reset" and method == "POST":
            sandbox.reset()
            return 200, {"ok": True}
        raise SandboxError(404, f"no route {method} {path}")

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise SandboxError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_REQUEST_BYTES:
            raise SandboxError(413, f"body over {MAX_REQUEST_BYTES} bytes")
        return self.rfile.read(length) if length else b""

    def _authenticate(self, sandbox: DynoPaySandbox) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), sandbox.api_key.encode()
        ):
            raise SandboxError(401, "missing or invalid API key")

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="dynopay-sandbox"')
        self.end_headers()
        self.wfile.write(data)

    def _send_fault(self, fault: _Fault) -> None:
        assert fault.status is not None
        if fault.body is None:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "fault"
            data = json.dumps({"error": f"sandbox fault: {phrase}"}).encode()
            content_type = "application/json"
        else:
            data = fault.body.encode()
            content_type = "text/plain; charset=utf-8"
        self.send_response(fault.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}", parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SandboxError(400, "body is not JSON") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "body must be a JSON object")
    return data


def _text(data: dict[str, Any], name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise SandboxError(400, f"{name} is required")
        return ""
    if not isinstance(value, str):
        raise SandboxError(400, f"{name} must be a string")
    return value.strip()


def _decimal(data: dict[str, Any], name: str, *, required: bool = True) -> Decimal | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise SandboxError(400, f"{name} is required")
        return None
    try:
        return parse_decimal(value)
    except ValueError as exc:
        raise SandboxError(400, f"{name}: {exc}") from None


def _bool(data: dict[str, Any], name: str, *, default: bool) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise SandboxError(400, f"{name} must be true or false")
    return value
