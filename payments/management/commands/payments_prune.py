"""payments_prune: drop the raw bodies of old, finished webhook receipts; keep their trail."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrowsite.commands import emit_json, fail, parse_duration, progress
from payments.pruning import BATCH_SIZE, PruneRefused, prune_receipts


class Command(BaseCommand):
    help = (
        "Empty the raw body of webhook receipts received longer ago than --older-than "
        "(database clock) that reached a final outcome and are not flagged for staff. "
        "Their hash, size, headers, outcome and links stay, so the audit trail survives; "
        "received and failed receipts (which payments_retry may still need) are never "
        "touched. One transaction per batch. Exit code 0: all well; 1: a batch failed "
        "(logged with its traceback; the others were still pruned)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            default="90d",
            help="Age of the receipts to prune, e.g. 90d, 12w (default 90d, at least 1d).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=BATCH_SIZE, help="Receipts per transaction."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be pruned; write nothing."
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = 0 if options["json"] else options["verbosity"]
        older_than = parse_duration(options["older_than"])
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be a positive number")
        try:
            report = prune_receipts(
                older_than=older_than,
                dry_run=options["dry_run"],
                batch_size=options["batch_size"],
                wrap=lambda batches, total: progress(
                    batches, total=total, command=self, label="pruning"
                ),
            )
        except PruneRefused as exc:
            raise CommandError(str(exc)) from None
        if options["json"]:
            emit_json(self, report.as_json())
        elif self.verbosity >= 1:
            verb = "would be pruned" if report.dry_run else "pruned"
            self.stdout.write(
                f"{report.receipts} receipt(s) received before {report.cutoff:%Y-%m-%d %H:%M} "
                f"UTC {verb}, {report.bytes_freed} bytes freed"
                + (f", {len(report.failed_batches)} batch(es) failed" if not report.dry_run else "")
            )
        if report.failed_batches:
            fail(
                f"{len(report.failed_batches)} batch(es) failed: "
                + ", ".join(
                    f"receipts {b['first_receipt']}..{b['last_receipt']} ({b['error']})"
                    for b in report.failed_batches[:10]
                )
            )
