"""payments_retry: re-process failed (or stuck) webhook receipts from their stored body."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from escrowsite.commands import emit_json, fail, parse_duration, progress
from payments.services import retry_receipt, retryable_receipts


class Command(BaseCommand):
    help = (
        "Re-process failed webhook receipts, and signed receipts left 'received' longer than "
        "--stale-after (e.g. by a killed process), from their stored raw body. Applied "
        "receipts are a no-op. Exit code 0 when every receipt reached a final outcome, "
        "1 when any failed again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id",
            type=int,
            action="append",
            dest="ids",
            default=[],
            help="Only this receipt id (repeatable). Default: all retryable.",
        )
        parser.add_argument(
            "--stale-after",
            default="5m",
            help="Age after which a 'received' receipt counts as stuck (default 5m).",
        )
        parser.add_argument("--limit", type=int, default=1000, help="At most this many receipts.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what each retry would do; write nothing."
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = 0 if options["json"] else options["verbosity"]
        if options["ids"]:
            ids = list(options["ids"])
        else:
            stale = parse_duration(options["stale_after"])
            ids = list(
                retryable_receipts(stale_after=stale).values_list("pk", flat=True)[
                    : options["limit"]
                ]
            )
        results = []
        for receipt_id in progress(ids, total=len(ids), command=self, label="retrying"):
            response = retry_receipt(receipt_id=receipt_id, dry_run=options["dry_run"])
            results.append({"status": response.status, **response.body})
            if not options["json"] and self.verbosity >= 1:
                prefix = "would be" if options["dry_run"] else "->"
                self.stdout.write(
                    f"receipt {receipt_id} {prefix} {response.body['outcome']} "
                    f"({response.status}) {response.body.get('detail', '')}"
                )
        failed = [r for r in results if r["status"] >= 500]
        if options["json"]:
            emit_json(
                self, {"dry_run": options["dry_run"], "results": results, "failed": len(failed)}
            )
        elif self.verbosity >= 1:
            self.stdout.write(f"{len(results)} receipt(s) retried, {len(failed)} failed")
        if failed:
            fail(f"{len(failed)} receipt(s) failed again: {[r['receipt'] for r in failed]}")
