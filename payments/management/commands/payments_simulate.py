"""Post one signed DynoPay webhook to our endpoint, like `stripe trigger`, and show the outcome."""

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payments.client import ProviderPayment, encode_body
from payments.parsing import EventType
from payments.sandbox import RATES, crypto_amount, post_webhook
from payments.signing import sign
from wallets.money import USD, parse_decimal

DEFAULT_URL = "http://127.0.0.1:8000/webhooks/dynopay/"
# Exit codes: 1 the endpoint answered but did not accept; 2 there was no answer at all.
EXIT_REJECTED = 1
EXIT_UNREACHABLE = 2


def _positive_decimal(value: str) -> Decimal:
    try:
        amount = parse_decimal(value)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if amount <= 0:
        raise CommandError(f"amount must be positive, got {value}")
    return amount


class Command(BaseCommand):
    help = (
        "Build a DynoPay webhook body for an escrow, sign it, POST it to the webhook endpoint "
        "and print the HTTP status and outcome. Exits 1 on a non-2xx answer, 2 when the "
        "endpoint cannot be reached. Example (the ES101325WZY2 incident): "
        "manage.py payments_simulate --escrow ES101325WZY2 --paid-usd 101.00 --coin LTC "
        "--paid-amount 0.9187 --tx-id 6462e85a-12da-403c-8eeb-e1697b9bbbe7"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--escrow", required=True, help="Escrow id (meta_data.refId).")
        parser.add_argument(
            "--paid-usd", required=True, help="USD value paid (base_amount), e.g. 101.00."
        )
        parser.add_argument("--coin", default="LTC", help="Coin paid (paid_currency), default LTC.")
        parser.add_argument(
            "--paid-amount",
            default=None,
            help="Coin amount paid (default: --paid-usd at the sandbox's fixed rate).",
        )
        parser.add_argument("--tx-id", default=None, help="Transaction id (default: a new uuid4).")
        parser.add_argument(
            "--event",
            default=EventType.CONFIRMED,
            choices=EventType.ALL,
            help=f"Event (default {EventType.CONFIRMED}).",
        )
        parser.add_argument(
            "--payment-id", default=None, help="Provider payment id (default: a new one)."
        )
        parser.add_argument("--url", default=DEFAULT_URL, help=f"Endpoint (default {DEFAULT_URL}).")
        parser.add_argument(
            "--secret",
            default=None,
            help="Signing secret (default: the first of DYNOPAY_WEBHOOK_SECRET).",
        )
        parser.add_argument("--timeout", type=float, default=10.0, help="Seconds (default 10).")
        parser.add_argument(
            "--json", action="store_true", help="Print one JSON object: request, status, response."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        secret = options["secret"] or next(iter(settings.DYNOPAY_WEBHOOK_SECRET), "")
        if not secret:
            raise CommandError("No signing secret: set DYNOPAY_WEBHOOK_SECRET or pass --secret.")
        body = encode_body(self._payment(options).to_webhook_body())
        signature = sign(body, secret)
        try:
            attempt = post_webhook(options["url"], body, signature, timeout=options["timeout"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        response = _maybe_json(attempt.body)

        if options["json"]:
            report = {
                "url": options["url"],
                "request": json.loads(body),
                "signature": signature,
                "status": attempt.status_code,
                "response": response,
                "error": attempt.error,
            }
            self.stdout.write(json.dumps(report, indent=2))
        else:
            if options["verbosity"] >= 2:
                self.stdout.write(f"POST {options['url']}\n{body.decode()}\nsignature {signature}")
            if attempt.status_code is not None:
                self.stdout.write(f"HTTP {attempt.status_code}")
                shown = (
                    json.dumps(response, indent=2) if not isinstance(response, str) else response
                )
                self.stdout.write(shown)

        if attempt.status_code is None:
            raise CommandError(
                f"Could not deliver to {options['url']}: {attempt.error}. "
                "Is the server running (make run)?",
                returncode=EXIT_UNREACHABLE,
            )
        if not attempt.succeeded:
            raise CommandError(
                f"The endpoint answered HTTP {attempt.status_code}: not accepted.",
                returncode=EXIT_REJECTED,
            )

    def _payment(self, options: dict[str, Any]) -> ProviderPayment:
        paid_usd = _positive_decimal(options["paid_usd"])
        coin = options["coin"].strip().upper()
        if options["paid_amount"] is not None:
            paid_amount = _positive_decimal(options["paid_amount"])
        elif coin in RATES:
            paid_amount = crypto_amount(paid_usd, coin)
        else:
            raise CommandError(f"No sandbox rate for {coin}: give --paid-amount.")
        now = datetime.now(UTC)
        return ProviderPayment(
            id=options["payment_id"] or "pay_" + uuid.uuid4().hex,
            status=options["event"].removeprefix("payment."),
            tx_id=options["tx_id"] or str(uuid.uuid4()),
            paid_amount=paid_amount,
            paid_currency=coin,
            base_amount=paid_usd,
            base_currency=USD,
            ref_id=options["escrow"],
            created_at=now,
            updated_at=now,
            amount_usd=paid_usd,
            coin=coin,
            crypto_amount=paid_amount,
            address="",
        )


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
