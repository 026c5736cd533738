"""escrow_sweep: act on passed escrow deadlines and warn parties before them."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow.sweeps import ItemResult, Result, run_sweep
from escrowsite.commands import emit_json, fail, progress

EXIT_FAILED = 1
EXIT_HELD = 2


class Command(BaseCommand):
    help = (
        "Deadlines on the database clock: expire (or cancel) unpaid escrows past their "
        "payment window, refund partially paid ones to the buyer's wallet, refund paid "
        "escrows the seller did not accept in time, auto-release delivered escrows past "
        "their auto-release time, and warn parties before each deadline (once, through "
        "the outbox; ESCROW_WARN_BEFORE_HOURS). Each escrow is handled in its own "
        "transaction under a row lock, re-checked there; concurrent sweeps are safe. "
        "Exit code 0: all well. 1: an item failed (logged with its traceback; the others "
        "were still handled). 2: no failures, but an overdue escrow was held for a human "
        "(an unpaid escrow holding money, or a payment delivery for it still unprocessed "
        "or failed: run payments_retry / wallets_check)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would happen; write nothing."
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")
        parser.add_argument(
            "--limit",
            type=int,
            default=None,
            help="At most this many overdue escrows (and this many warnings) per run.",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help=(
                "Handle items in this many threads, each with its own database connection "
                "(default 1). Use 4 or so to clear a backlog faster."
            ),
        )
        parser.add_argument(
            "--no-warnings", action="store_true", help="Only act on passed deadlines."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be a positive number")
        if not 1 <= options["workers"] <= 32:
            raise CommandError("--workers must be between 1 and 32")
        self.verbosity = 0 if options["json"] else options["verbosity"]
        self.dry_run = options["dry_run"]
        report = run_sweep(
            dry_run=self.dry_run,
            limit=options["limit"],
            warnings=not options["no_warnings"],
            workers=options["workers"],
            wrap=lambda items, total: progress(items, total=total, command=self, label="sweeping"),
            on_result=self._line,
        )
        failed, held = report.having(Result.FAILED), report.having(Result.HELD)
        if options["json"]:
            emit_json(self, report.as_json())
        elif self.verbosity >= 1:
            counts = report.as_json()["counts"]
            done = counts[Result.WOULD] if self.dry_run else counts[Result.DONE]
            verb = "would be handled" if self.dry_run else "handled"
            self.stdout.write(
                f"{len(report.items)} item(s): {done} {verb}, "
                f"{counts[Result.SKIPPED]} skipped, {len(held)} held, {len(failed)} failed"
            )
            if self.verbosity >= 2:
                for task, count in report.summary().items():
                    self.stdout.write(f"  {task}: {count}")
        if failed:
            fail(
                f"{len(failed)} item(s) failed: "
                + ", ".join(f"{item.escrow_id} ({item.task})" for item in failed[:20]),
                EXIT_FAILED,
            )
        if held:
            fail(
                f"{len(held)} overdue escrow(s) held for a human: "
                + ", ".join(item.escrow_id for item in held[:20]),
                EXIT_HELD,
            )

    def _line(self, item: ItemResult) -> None:
        # Every item at -v2; at -v1 only what needs a look (cron mails stderr).
        if self.verbosity >= 2 or (
            self.verbosity >= 1 and item.outcome in (Result.FAILED, Result.HELD)
        ):
            stream = self.stderr if item.outcome in (Result.FAILED, Result.HELD) else self.stdout
            text = f"{item.escrow_id} {item.task}: {item.outcome} {item.from_status}->"
            # Starts on a fresh line when a progress bar is being drawn on the terminal.
            prefix = "\n" if self.stdout.isatty() else ""
            stream.write(f"{prefix}{text}{item.to_status or '-'} {item.detail}".rstrip())
