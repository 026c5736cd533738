"""escrow_inspect: one escrow's status, money, holding, records, ledger and wallets."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from escrow.selectors import escrow_summary
from escrowsite.errors import ApplicationError


def _at(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "-"


class Command(BaseCommand):
    help = (
        "Show one escrow: status, amounts, timestamps, its holding, transaction records, "
        "ledger transfers and both parties' wallet balances."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("escrow_id", help="Public escrow id, e.g. ES101325WZY2.")
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        escrow_id = options["escrow_id"].strip().upper()
        try:
            # Durable and read-only: one consistent snapshot, never part of a larger unit.
            with transaction.atomic(durable=True):
                summary = escrow_summary(escrow_id)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        if options["json"]:
            self.stdout.write(json.dumps(summary, cls=DjangoJSONEncoder, indent=2))
        else:
            self.stdout.write("\n".join(self._lines(summary)))

    def _lines(self, s: dict[str, Any]) -> list[str]:
        money, cur = s["amounts"], s["amounts"]["currency"]
        lines = [
            f"{s['escrow_id']}  {s['status_label']}",
            f"  buyer   {s['buyer']['telegram_id']}  wallet {s['buyer']['wallet_balance']} {cur}",
            f"  seller  {s['seller']['telegram_id']}  wallet {s['seller']['wallet_balance']} {cur}",
            f"  amount {money['amount']}  fee {money['fee_amount']} ({money['fee_split']}: "
            f"buyer {money['buyer_fee']}, seller {money['seller_fee']})  "
            f"total due {money['total_due']} {cur}",
        ]
        if money["accepted_shortfall"]:
            lines.append(f"  accepted shortfall {money['accepted_shortfall']} {cur}")
        if s["payment"]["deposit_tx_hash"]:
            lines.append(f"  deposit tx {s['payment']['deposit_tx_hash']}")
        lines.append("Timestamps")
        lines += [f"  {name:<22}{_at(value)}" for name, value in s["timestamps"].items()]
        holding = s["holding"]
        lines.append(
            "Holding  none (nothing paid)"
            if holding is None
            else f"Holding  {holding['status']}  balance {holding['balance']} {cur}"
        )
        lines.append(f"Transaction records ({len(s['transactions'])})")
        lines += [
            f"  {t['transaction_id']:<40}{t['type']:<22}{t['amount']:>12} {t['currency']}"
            for t in s["transactions"]
        ]
        lines.append(f"Ledger transfers ({len(s['transfers'])})")
        lines += [
            f"  #{t['id']:<6}{t['kind']:<22}{t['amount']:>12} {t['currency']}  "
            f"{t['debit_account']} -> {t['credit_account']}"
            for t in s["transfers"]
        ]
        lines.append("Status history")
        lines += [
            f"  {_at(c['at'])}  {c['from']} -> {c['to']}  ({c['source']})"
            + (f"  {c['reason']}" if c["reason"] else "")
            for c in s["status_history"]
        ]
        return lines
