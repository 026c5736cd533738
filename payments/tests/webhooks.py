"""Helpers for webhook tests: DynoPay-shaped bodies, signed like the provider signs them."""

import json
import uuid
from decimal import Decimal
from typing import Any

from django.test import Client

from payments.signing import SIGNATURE_HEADER, sign

SECRET = "test-webhook-secret"  # conftest sets DYNOPAY_WEBHOOK_SECRET to this
URL = "/webhooks/dynopay/"
INCIDENT_TX = "6462e85a-12da-403c-8eeb-e1697b9bbbe7"


def payload(
    *,
    escrow_id: str = "ES101325WZY2",
    base_amount: str | Decimal = "101.00",
    event: str = "payment.confirmed",
    tx_id: str | None = None,
    payment_id: str | None = None,
    paid_amount: str = "0.9187",
    coin: str = "LTC",
    **extra: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event": event,
        "id": payment_id or f"pay_{uuid.uuid4().hex[:12]}",
        "status": event.split(".")[1],
        "txId": tx_id or str(uuid.uuid4()),
        "paid_amount": paid_amount,
        "paid_currency": coin,
        "base_amount": str(base_amount),
        "base_currency": "USD",
        "meta_data": {"refId": escrow_id},
        "created_at": "2025-10-13T14:11:40Z",
    }
    data.update(extra)
    return data


def encode(data: dict[str, Any] | bytes) -> bytes:
    return data if isinstance(data, bytes) else json.dumps(data).encode()


def post(
    client: Client,
    data: dict[str, Any] | bytes,
    *,
    secret: str | None = SECRET,
    signature: str | None = None,
):
    body = encode(data)
    headers = {}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    elif secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return client.post(URL, data=body, content_type="application/json", headers=headers)
