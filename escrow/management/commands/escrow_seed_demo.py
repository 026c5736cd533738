"""Load the `make run` demo: a staff login, the incident's wallet and escrow, other states."""

import json
import secrets
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import get_commands
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from escrow import services
from escrow.audit import record_staff_action
from escrow.fees import compute_fees
from escrow.models import Escrow, EscrowStatus, FeeSplit, StaffAction
from escrowsite.errors import ApplicationError
from wallets import ledger
from wallets.models import (
    Account,
    AccountKind,
    Customer,
    Transaction,
    TransactionType,
    Transfer,
    TransferKind,
)
from wallets.money import USD

ADMIN_USERNAME = "admin"
# The incident (docs: /work/shared/incident-ES101325WZY2.md): this buyer's wallet held
# $7.35 and ES101325WZY2 awaited a payment of $96.74 when the lost webhook arrived.
INCIDENT_BUYER = 5590563715
INCIDENT_ESCROW_ID = "ES101325WZY2"
INCIDENT_TOTAL_DUE = Decimal("96.74")
OPENING_BALANCE = Decimal("7.35")
INCIDENT_TX_ID = "6462e85a-12da-403c-8eeb-e1697b9bbbe7"
DEFAULT_WEBHOOK_URL = "http://127.0.0.1:8000/webhooks/dynopay/"
OPENING_BALANCE_KEY = f"demo:opening_balance:{INCIDENT_BUYER}"
OPENING_BALANCE_RECORD = f"ADJ_DEMO_{INCIDENT_BUYER}"
DEMO_SELLER = 7845120931
DEMO_BUYER = 6029381147
CUSTOMERS = {
    INCIDENT_BUYER: "incident_buyer",
    DEMO_SELLER: "demo_seller",
    DEMO_BUYER: "demo_buyer",
}
SOURCE = "demo_seed"


@dataclass(frozen=True)
class DemoEscrow:
    """One demo escrow and the lifecycle steps (escrow.services calls) that bring it to `status`."""

    escrow_id: str
    status: str
    amount: Decimal
    fee_split: str
    steps: tuple[str, ...]
    description: str


# Every other state is played through the services, so holdings, fees and wallets add up.
OTHER_ESCROWS = (
    DemoEscrow(
        "ES101225PAID",
        EscrowStatus.PAYMENT_CONFIRMED,
        Decimal("40.00"),
        FeeSplit.BUYER_PAYS,
        ("pay",),
        "Paid, waiting for the seller to accept",
    ),
    DemoEscrow(
        "ES101125ACTV",
        EscrowStatus.ACTIVE,
        Decimal("150.00"),
        FeeSplit.BUYER_PAYS,
        ("pay", "accept"),
        "Seller accepted, delivery due",
    ),
    DemoEscrow(
        "ES101025DLVR",
        EscrowStatus.DELIVERED,
        Decimal("64.50"),
        FeeSplit.SELLER_PAYS,
        ("pay", "accept", "deliver"),
        "Delivered, awaiting release",
    ),
    DemoEscrow(
        "ES100925DONE",
        EscrowStatus.COMPLETED,
        Decimal("250.00"),
        FeeSplit.SPLIT,
        ("pay", "accept", "deliver", "release"),
        "Released to the seller",
    ),
    DemoEscrow(
        "ES100825DISP",
        EscrowStatus.DISPUTED,
        Decimal("120.00"),
        FeeSplit.BUYER_PAYS,
        ("pay", "accept", "dispute"),
        "Buyer says nothing arrived",
    ),
    DemoEscrow(
        "ES100725CNCL",
        EscrowStatus.CANCELLED,
        Decimal("30.00"),
        FeeSplit.BUYER_PAYS,
        ("cancel",),
        "Cancelled before payment",
    ),
)


def incident_terms(total_due: Decimal = INCIDENT_TOTAL_DUE) -> tuple[Decimal, str]:
    """The amount and fee split whose total due is exactly `total_due` under the current
    fee settings: the incident's buyer_pays (92.13 + 4.61 at 5%) when reachable, else the
    split, else seller_pays (where total due equals the amount)."""
    for fee_split in (FeeSplit.BUYER_PAYS, FeeSplit.SPLIT, FeeSplit.SELLER_PAYS):
        amount = total_due
        # total_due grows strictly with the amount: walk down until it is not above.
        while amount > 0:
            try:
                total = compute_fees(amount=amount, fee_split=fee_split).total_due
            except ApplicationError:
                break  # the fee would swallow the amount; smaller amounts fare no better
            if total == total_due:
                return amount, fee_split
            if total < total_due:
                break
            amount -= Decimal("0.01")
    raise CommandError(f"No escrow amount gives a total due of {total_due} with these fees.")


def _demo_payment(escrow: Escrow) -> services.IncomingPayment:
    # A stable fake transaction id per escrow, so the records look like real ones.
    tx_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"escrow-demo:{escrow.escrow_id}"))
    return services.IncomingPayment(
        provider="dynopay", tx_id=tx_id, usd_amount=escrow.total_due, crypto_currency="LTC"
    )


def _demo_pay(escrow: Escrow) -> object:
    """Pay as staff confirming by hand would, audited: every payment record then has an
    explanation (a receipt or a staff action), so `wallets_check` passes on the demo."""
    actor = get_user_model().objects.get(username=ADMIN_USERNAME)
    payment = _demo_payment(escrow)
    outcome = services.confirm_payment(
        escrow_id=escrow.escrow_id, payment=payment, source=SOURCE, actor_id=actor.pk
    )
    record_staff_action(
        actor_id=actor.pk,
        action="demo_seed_payment",
        reason="Demo data loaded by escrow_seed_demo",
        escrow=outcome.escrow,
        target=f"dynopay transaction {payment.tx_id}",
        changes={
            "tx_id": payment.tx_id,
            "transactions": [t.transaction_id for t in outcome.transactions],
        },
    )
    return outcome


STEPS: dict[str, Callable[[Escrow], object]] = {
    "pay": _demo_pay,
    "accept": lambda e: services.accept_escrow(escrow_id=e.escrow_id, source=SOURCE),
    "deliver": lambda e: services.mark_delivered(escrow_id=e.escrow_id, source=SOURCE),
    "release": lambda e: services.release_escrow(escrow_id=e.escrow_id, source=SOURCE),
    "dispute": lambda e: services.open_dispute(
        escrow_id=e.escrow_id, source=SOURCE, reason="Buyer reports the item never arrived."
    ),
    "cancel": lambda e: services.cancel_escrow(
        escrow_id=e.escrow_id, source=SOURCE, reason="Buyer changed their mind."
    ),
}


class Command(BaseCommand):
    help = (
        "Load demo data for a local run (idempotent): a staff superuser 'admin' whose "
        f"password is printed, customer {INCIDENT_BUYER} with ${OPENING_BALANCE} in their "
        f"wallet, escrow {INCIDENT_ESCROW_ID} awaiting a payment of ${INCIDENT_TOTAL_DUE}, "
        "and escrows in other states. Everything moves through the ledger and escrow "
        "services; what already exists is left as it is."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Where the site is served, for the printed login URL.",
        )
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="Where the admin's generated password is kept (default var/demo-admin-password).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be created; write nothing."
        )
        parser.add_argument("--json", action="store_true", help="Print a JSON summary.")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Seed even though DEBUG is off (a demo login does not belong in production).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                "Refusing to load demo data (a superuser with a printed password) while "
                "DEBUG is off. Use --force if this really is a throwaway database."
            )
        self.verbosity = options["verbosity"]
        self.dry_run = options["dry_run"]
        self.as_json = options["json"]
        password_file = options["password_file"] or (
            Path(settings.BASE_DIR) / "var" / "demo-admin-password"
        )
        self.errors: list[dict[str, str]] = []
        summary: dict[str, Any] = {"dry_run": self.dry_run, "database": connection.vendor}

        admin = self._item("admin", lambda: self._admin(password_file))
        login_url = options["base_url"].rstrip("/") + "/admin/"
        summary["admin"] = {"username": ADMIN_USERNAME, "login_url": login_url, **(admin or {})}
        summary["wallet"] = self._item("wallet", lambda: self._opening_balance(admin))
        summary["escrows"] = [
            self._item(INCIDENT_ESCROW_ID, self._incident_escrow),
            *(
                self._item(spec.escrow_id, lambda spec=spec: self._other_escrow(spec))
                for spec in OTHER_ESCROWS
            ),
        ]
        summary["errors"] = self.errors

        if self.as_json:
            self.stdout.write(json.dumps(summary, indent=2, default=str))
        elif self.verbosity >= 1:
            self._print(summary)
        if self.errors:
            raise CommandError(f"{len(self.errors)} demo item(s) failed; see above.")

    # --- items: each in its own transaction, and a failure does not stop the others ----

    def _item(self, name: str, build: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        try:
            return build()
        except Exception as exc:  # noqa: BLE001 - reported, and the command exits non-zero
            self.errors.append({"item": name, "error": f"{type(exc).__name__}: {exc}"})
            if self.verbosity >= 2:
                self.stderr.write(traceback.format_exc())
            return {"escrow_id": name, "result": "failed"} if name.startswith("ES") else None

    def _admin(self, password_file: Path) -> dict[str, Any]:
        User = get_user_model()
        stored = password_file.read_text().strip() if password_file.exists() else ""
        user = User.objects.filter(username=ADMIN_USERNAME).first()
        if self.dry_run:
            return {"result": "exists" if user else "would create", "password": None}
        with transaction.atomic(durable=True):
            if user is None:
                password = stored or secrets.token_urlsafe(12)
                User.objects.create_superuser(
                    username=ADMIN_USERNAME, email="admin@localhost", password=password
                )
                result = "created"
            elif stored and user.check_password(stored):
                password, result = stored, "exists"
                if not (user.is_active and user.is_staff and user.is_superuser):
                    user.is_active = user.is_staff = user.is_superuser = True
                    user.save(update_fields=["is_active", "is_staff", "is_superuser"])
            else:
                # The password file was lost (or the database came from elsewhere): a new one.
                password = secrets.token_urlsafe(12)
                user.set_password(password)
                user.is_active = user.is_staff = user.is_superuser = True
                user.save()
                result = "password reset"
        if password != stored:
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.touch(mode=0o600)
            password_file.write_text(password + "\n")
        return {"result": result, "password": password, "password_file": str(password_file)}

    def _customers(self) -> None:
        for telegram_id, username in CUSTOMERS.items():
            Customer.objects.get_or_create(telegram_id=telegram_id, defaults={"username": username})

    def _opening_balance(self, admin: dict[str, Any] | None) -> dict[str, Any]:
        """The incident buyer's $7.35: a staff adjustment posted through the ledger once."""
        exists = Transfer.objects.filter(idempotency_key=OPENING_BALANCE_KEY).exists()
        if exists or self.dry_run:
            result = "exists" if exists else "would create"
        else:
            actor = get_user_model().objects.get(username=ADMIN_USERNAME)
            with transaction.atomic(durable=True):
                self._customers()
                transfer = ledger.post_transfer(
                    debit=ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS, currency=USD),
                    credit=ledger.customer_wallet(customer=INCIDENT_BUYER, currency=USD),
                    amount=OPENING_BALANCE,
                    kind=TransferKind.STAFF_ADJUSTMENT,
                    idempotency_key=OPENING_BALANCE_KEY,
                    reference="demo seed",
                    memo=f"Opening balance as before incident {INCIDENT_ESCROW_ID}",
                    actor_id=actor.pk,
                )
                record = Transaction.objects.create(
                    transaction_id=OPENING_BALANCE_RECORD,
                    customer_id=INCIDENT_BUYER,
                    type=TransactionType.STAFF_ADJUSTMENT,
                    amount=OPENING_BALANCE,
                    currency=USD,
                    description="Demo opening balance (staff adjustment)",
                    confirmed_at=transfer.created_at,
                )
                record.transfers.add(transfer)
                StaffAction.objects.create(
                    actor=actor,
                    action="wallet_adjustment",
                    reason="Demo data: the incident buyer's wallet balance before the payment.",
                    target=f"customer {INCIDENT_BUYER}",
                    changes={
                        "amount": str(OPENING_BALANCE),
                        "currency": USD,
                        "transfer_id": transfer.pk,
                    },
                )
            result = "created"
        available = (
            Account.objects.filter(
                kind=AccountKind.CUSTOMER, customer_id=INCIDENT_BUYER, currency=USD
            )
            .values_list("balance", flat=True)
            .first()
        )
        return {
            "customer": INCIDENT_BUYER,
            "result": result,
            "available": available,
            "currency": USD,
        }

    def _incident_escrow(self) -> dict[str, Any]:
        existing = Escrow.objects.filter(escrow_id=INCIDENT_ESCROW_ID).first()
        if existing or self.dry_run:
            return self._describe(existing, INCIDENT_ESCROW_ID, EscrowStatus.PAYMENT_PENDING)
        amount, fee_split = incident_terms()
        with transaction.atomic(durable=True):
            self._customers()
            escrow = services.create_escrow(
                buyer_id=INCIDENT_BUYER,
                seller_id=DEMO_SELLER,
                amount=amount,
                fee_split=fee_split,
                escrow_id=INCIDENT_ESCROW_ID,
                description="The incident's escrow: replay its LTC payment of $101.00",
            )
        return self._describe(escrow, INCIDENT_ESCROW_ID, EscrowStatus.PAYMENT_PENDING, "created")

    def _other_escrow(self, spec: DemoEscrow) -> dict[str, Any]:
        existing = Escrow.objects.filter(escrow_id=spec.escrow_id).first()
        if existing or self.dry_run:
            return self._describe(existing, spec.escrow_id, spec.status)
        with transaction.atomic(durable=True):
            self._customers()
            escrow = services.create_escrow(
                buyer_id=DEMO_BUYER,
                seller_id=DEMO_SELLER,
                amount=spec.amount,
                fee_split=spec.fee_split,
                escrow_id=spec.escrow_id,
                description=spec.description,
            )
            for step in spec.steps:
                STEPS[step](escrow)
            escrow.refresh_from_db()
            if escrow.status != spec.status:
                raise CommandError(f"{spec.escrow_id} ended {escrow.status}, not {spec.status}.")
        return self._describe(escrow, spec.escrow_id, spec.status, "created")

    @staticmethod
    def _describe(
        escrow: Escrow | None, escrow_id: str, status: str, result: str | None = None
    ) -> dict[str, Any]:
        if escrow is None:
            return {"escrow_id": escrow_id, "result": "would create", "status": status}
        return {
            "escrow_id": escrow.escrow_id,
            "result": result or "exists",
            "status": escrow.status,
            "demo_status": status,
            "amount": escrow.amount,
            "fee_split": escrow.fee_split,
            "total_due": escrow.total_due,
            "currency": escrow.currency,
        }

    # --- output ---------------------------------------------------------------------

    def _print(self, summary: dict[str, Any]) -> None:
        out = self.stdout.write
        dry_run = " - dry run, nothing written" if self.dry_run else ""
        out(f"Demo data ({summary['database']}){dry_run}:")
        wallet = summary["wallet"]
        if wallet:
            balance = "-" if wallet["available"] is None else f"{wallet['available']} {USD}"
            out(f"  wallet of {wallet['customer']:<12} {wallet['result']:<13} available {balance}")
        for item in summary["escrows"]:
            line = f"  {item['escrow_id']:<22} {item['result']:<13} {item.get('status', '')}"
            if "total_due" in item:
                line += f", total due {item['total_due']} {item['currency']}"
                if item["status"] != item["demo_status"]:
                    line += f" (seeded as {item['demo_status']})"
            out(line)
        for error in self.errors:
            self.stderr.write(self.style.ERROR(f"  {error['item']}: failed: {error['error']}"))
        admin = summary["admin"]
        if admin.get("password"):
            out("")
            out(self.style.SUCCESS(f"Staff login: {admin['login_url']}"))
            out(self.style.SUCCESS(f"  username: {admin['username']}"))
            out(self.style.SUCCESS(f"  password: {admin['password']}"))
            out(f"  (kept in {admin['password_file']}; {admin['result']})")
        if "payments_simulate" in get_commands() and not self.dry_run:
            url = summary["admin"]["login_url"].removesuffix("/admin/") + "/webhooks/dynopay/"
            out("")
            out("Replay the incident's payment ($101.00 in LTC against $96.74 due):")
            out(
                f"  .venv/bin/python manage.py payments_simulate --escrow {INCIDENT_ESCROW_ID} "
                f"--paid-usd 101.00 --coin LTC --paid-amount 0.9187 --tx-id {INCIDENT_TX_ID}"
                + ("" if url == DEFAULT_WEBHOOK_URL else f" --url {url}")
            )
