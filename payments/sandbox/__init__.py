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

A package: `provider` (the in-memory provider, DynoPaySandbox), `server` (its HTTP face)
and `delivery` (signed webhooks, recorded and retried). Callers import from here.
"""

from payments.sandbox.delivery import (
    DeliveryAttempt,
    RetryPolicy,
    WebhookDelivery,
    deliver_webhook,
    post_webhook,
)
from payments.sandbox.provider import RATES, DynoPaySandbox, crypto_amount
from payments.sandbox.server import SandboxError

__all__ = [
    "RATES",
    "DeliveryAttempt",
    "DynoPaySandbox",
    "RetryPolicy",
    "SandboxError",
    "WebhookDelivery",
    "crypto_amount",
    "deliver_webhook",
    "post_webhook",
]
