"""escrow_create: open an escrow awaiting the buyer's payment and print its id and total due."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from escrow.models import Escrow, FeeSplit
from escrow.services import create_escrow
from escrowsite.errors import ApplicationError
from wallets.money import parse_decimal


def _describe(escrow: Escrow) -> dict[str, Any]:
    return {
        "escrow_id": escrow.escrow_id,
        "status": escrow.status,
        "buyer": escrow.buyer_id,
        "seller": escrow.seller_id,
        "currency": escrow.currency,
        "amount": escrow.amount,
        "fee_split": escrow.fee_split,
        "fee_amount": escrow.fee_amount,
        "buyer_fee": escrow.buyer_fee,
        "seller_fee": escrow.seller_fee,
        "total_due": escrow.total_due,
        "delivery_hours": escrow.delivery_hours,
        "expires_at": escrow.expires_at,
    }


class Command(BaseCommand):
    help = (
        "Create an escrow between two customers (Telegram user ids; unknown ones are "
        "created). Prints the escrow id and the total the buyer must pay."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--buyer", type=int, required=True, help="Buyer's Telegram id.")
        parser.add_argument("--seller", type=int, required=True, help="Seller's Telegram id.")
        parser.add_argument("--amount", required=True, help="USD amount, e.g. 92.13.")
        parser.add_argument(
            "--escrow-id", help="Use this id (ES + MMDDYY + 4 characters) instead of a new one."
        )
        parser.add_argument(
            "--fee-split",
            choices=FeeSplit.values,
            default=FeeSplit.BUYER_PAYS,
            help="Who pays the fee (default: buyer_pays).",
        )
        parser.add_argument(
            "--delivery-hours", type=int, help="Hours the seller has to deliver once paid."
        )
        parser.add_argument("--description", default="", help="What is being sold.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be created; save nothing."
        )
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            amount = parse_decimal(options["amount"])
        except ValueError as exc:
            raise CommandError(f"Invalid --amount: {exc}") from exc
        try:
            with transaction.atomic(durable=True):
                escrow = create_escrow(
                    buyer_id=options["buyer"],
                    seller_id=options["seller"],
                    amount=amount,
                    fee_split=options["fee_split"],
                    delivery_hours=options["delivery_hours"],
                    escrow_id=options["escrow_id"],
                    description=options["description"],
                )
                result = _describe(escrow) | {"dry_run": options["dry_run"]}
                if options["dry_run"]:
                    transaction.set_rollback(True)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

        if options["json"]:
            self.stdout.write(json.dumps(result, cls=DjangoJSONEncoder, indent=2))
        elif options["verbosity"] >= 1:
            prefix = "Would create" if options["dry_run"] else "Created"
            self.stdout.write(
                f"{prefix} {result['escrow_id']}: {result['amount']} {result['currency']}, "
                f"fee {result['fee_amount']} ({result['fee_split']}), "
                f"total due {result['total_due']} {result['currency']}, "
                f"pay by {result['expires_at']:%Y-%m-%d %H:%M} UTC."
            )
