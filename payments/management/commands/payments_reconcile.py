"""payments_reconcile: pull confirmed payments we missed from the provider's API."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from escrowsite.commands import emit_json, fail, parse_duration
from payments.provider import reconcile


class Command(BaseCommand):
    help = (
        "For escrows awaiting payment or cancelled/expired within --since, ask the provider "
        "for their payments; any confirmed payment missing here is applied through the "
        "webhook path (so a later webhook for it is a duplicate). Exit code 0 when all is "
        "well, 1 when the provider could not be asked or a payment failed to apply, 2 with "
        "--fail-on-found when missing payments were found."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", default="7d", help="How far back closed escrows count.")
        parser.add_argument(
            "--escrow",
            action="append",
            dest="escrows",
            default=[],
            help="Only this escrow id (repeatable).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what is missing; apply nothing."
        )
        parser.add_argument(
            "--fail-on-found",
            action="store_true",
            help="Exit 2 if any missed payment was found (for alerting).",
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = 0 if options["json"] else options["verbosity"]
        report = reconcile(
            since=parse_duration(options["since"]),
            escrow_ids=options["escrows"] or None,
            dry_run=options["dry_run"],
        )
        if options["json"]:
            emit_json(
                self,
                {
                    "dry_run": options["dry_run"],
                    "items": [i.as_json() for i in report.items],
                    "found": len(report.found),
                    "problems": len(report.problems),
                },
            )
        elif self.verbosity >= 1:
            for item in report.items:
                if item.action != "already_applied" or self.verbosity >= 2:
                    self.stdout.write(
                        f"{item.escrow_id} {item.payment_id or '-'} {item.tx_id or '-'}: "
                        f"{item.action} {item.detail}".rstrip()
                    )
            self.stdout.write(
                f"{len({i.escrow_id for i in report.items})} escrow(s) checked, "
                f"{len(report.found)} missed payment(s) found, {len(report.problems)} problem(s)"
            )
        if report.problems:
            fail(f"{len(report.problems)} problem(s) during reconciliation")
        if report.found and options["fail_on_found"]:
            fail(f"{len(report.found)} missed payment(s) found", code=2)
