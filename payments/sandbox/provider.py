"""The in-memory provider: payments, idempotency, faults, and the webhooks it sends."""

from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from http.server import ThreadingHTTPServer

from payments.client import PAYMENT_STATUSES, ProviderPayment, encode_body
from payments.sandbox.delivery import RetryPolicy, WebhookDelivery, _now, deliver_webhook
from payments.sandbox.server import SandboxError, _Handler, _SandboxHTTPServer
from payments.signing import sign
from wallets.money import USD

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


def crypto_amount(usd: Decimal, coin: str) -> Decimal:
    """`usd` in `coin` at the sandbox's fixed rate, to 8 places."""
    return (usd / RATES[coin]).quantize(COIN_PLACES, rounding=ROUND_HALF_UP)


def _address(coin: str) -> str:
    if coin in ("ETH", "USDT", "USDC"):
        return "0x" + secrets.token_hex(20)
    return ADDRESS_PREFIX.get(coin, "sbx") + secrets.token_hex(16)


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
