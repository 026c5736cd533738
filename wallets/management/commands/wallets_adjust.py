"""wallets_adjust: credit or debit a customer's wallet as staff, through the ledger."""

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from escrowsite.errors import ApplicationError
from wallets import services
from wallets.money import parse_decimal

SYSTEM_USERNAME = "system"


def system_user() -> AbstractBaseUser:
    """The staff identity of unattended commands; it has no password and cannot log in."""
    user, created = get_user_model().objects.get_or_create(
        username=SYSTEM_USERNAME, defaults={"is_staff": True, "is_active": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


class Command(BaseCommand):
    help = (
        "Credit (positive --amount) or debit (negative) a customer's wallet as a staff "
        "adjustment: a ledger transfer, a transaction record and an audit row. Amounts above "
        "WALLET_ADJUSTMENT_APPROVAL_THRESHOLD become a request another staff member approves."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--customer", type=int, required=True, help="Telegram user id.")
        parser.add_argument(
            "--amount", required=True, help="Signed USD amount, e.g. 5.00 or -2.50."
        )
        parser.add_argument("--reason", required=True, help="Why; kept in the audit log.")
        parser.add_argument(
            "--actor",
            help=f"Username of the staff member responsible (default: {SYSTEM_USERNAME!r}).",
        )
        parser.add_argument(
            "--idempotency-key",
            help="Makes a retried command return the first result instead of adjusting twice.",
        )
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            amount = parse_decimal(options["amount"])
        except ValueError as exc:
            raise CommandError(f"Invalid --amount: {exc}") from exc
        try:
            with transaction.atomic(durable=True):
                actor = self._actor(options["actor"])
                outcome = services.adjust_wallet(
                    customer_id=options["customer"],
                    amount=amount,
                    reason=options["reason"],
                    actor_id=actor.pk,
                    idempotency_key=options["idempotency_key"],
                )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

        result = {
            "status": outcome.status,
            "customer": outcome.customer_id,
            "amount": f"{outcome.amount:+}",
            "currency": outcome.currency,
            "actor": actor.get_username(),
            "replayed": outcome.replayed,
            "request_id": outcome.request.pk if outcome.request else None,
            "transfer_id": outcome.transfer.pk if outcome.transfer else None,
            "transaction_id": outcome.record.transaction_id if outcome.record else None,
            "balance": str(outcome.balance) if outcome.balance is not None else None,
        }
        if options["json"]:
            self.stdout.write(json.dumps(result))
        elif outcome.posted:
            replay = " (already done earlier; nothing changed)" if outcome.replayed else ""
            self.stdout.write(
                self.style.SUCCESS(
                    f"Adjusted customer {outcome.customer_id}'s wallet by "
                    f"{result['amount']} {outcome.currency}{replay}: "
                    f"transfer #{result['transfer_id']}, transaction {result['transaction_id']}, "
                    f"balance {result['balance']} {outcome.currency}."
                )
            )
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"Adjustment of {result['amount']} {outcome.currency} for customer "
                    f"{outcome.customer_id} needs approval by another staff member: "
                    f"request #{result['request_id']} is {outcome.status}."
                )
            )

    def _actor(self, username: str | None) -> AbstractBaseUser:
        if not username:
            return system_user()
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        return user
