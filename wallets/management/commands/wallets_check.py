"""wallets_check: the integrity checker, whole-database invariants each reported by name."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from escrowsite.commands import emit_json, fail, parse_duration, progress
from wallets import integrity

EXIT_FAILED = 1  # a check found something, or could not run
EXIT_USAGE = 2
# Ids listed per check in text output at verbosity 1 (all of the capped list at 2).
SHOWN_AT_V1 = 10


class Command(BaseCommand):
    help = (
        "Check whole-database invariants of the ledger, escrows, holdings and payment "
        "receipts on one read-only snapshot, and report each by name with the offending "
        "ids and a hint: " + ", ".join(integrity.CHECKS) + ". "
        "Exit code 0: every check passed (warnings allowed). 1: a check found something, "
        "or could not run (its query failed: never reported as 'no issues'). 2: usage error."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="append",
            dest="checks",
            default=[],
            metavar="NAME",
            help="Run only this check (repeatable, or comma-separated). Default: all.",
        )
        parser.add_argument(
            "--list", action="store_true", help="List the checks and what each asserts; run none."
        )
        parser.add_argument(
            "--stale-after",
            default=None,
            help=(
                "Age after which a signed receipt still 'received' counts as stuck "
                "(default: the WALLETS_CHECK_STALE_AFTER setting, 5m)."
            ),
        )
        parser.add_argument(
            "--max-ids",
            type=int,
            default=integrity.DEFAULT_MAX_IDS,
            help="List at most this many offending ids per check (the count is always total).",
        )
        parser.add_argument("--json", action="store_true", help="Machine-readable output.")

    def handle(self, *args: Any, **options: Any) -> None:
        self.verbosity = 0 if options["json"] else options["verbosity"]
        if options["list"]:
            self._list(options["json"])
            return
        names = [n.strip() for value in options["checks"] for n in value.split(",") if n.strip()]
        try:
            checks = integrity.select_checks(names)
        except integrity.UnknownCheck as exc:
            fail(str(exc), EXIT_USAGE)
        stale_text = options["stale_after"] or settings.WALLETS_CHECK_STALE_AFTER
        try:
            stale_after = parse_duration(stale_text)
        except CommandError as exc:
            fail(f"--stale-after: {exc}", EXIT_USAGE)
        if options["max_ids"] < 1:
            fail("--max-ids must be a positive number", EXIT_USAGE)
        try:
            report = integrity.run_checks(
                checks=checks,
                stale_after=stale_after,
                max_ids=options["max_ids"],
                wrap=lambda items, total: progress(
                    items, total=total, command=self, label="checking"
                ),
            )
        except DatabaseError as exc:
            # The snapshot itself could not be taken (no PostgreSQL, connection lost).
            fail(f"the integrity checks could not run: {exc}", EXIT_FAILED)

        if options["json"]:
            emit_json(self, report.as_json())
        else:
            self._print(report)
        if report.failed:
            fail(
                f"{len(report.failed)} integrity check(s) failed: "
                + ", ".join(f"{r.name} ({'error' if r.error else r.count})" for r in report.failed),
                EXIT_FAILED,
            )

    def _list(self, as_json: bool) -> None:
        checks = integrity.select_checks()
        if as_json:
            emit_json(
                self,
                [
                    {
                        "name": c.name,
                        "severity": c.severity,
                        "subject": c.subject,
                        "description": c.description,
                        "hint": c.hint,
                    }
                    for c in checks
                ],
            )
            return
        for c in checks:
            suffix = " (warning)" if c.severity == integrity.WARNING else ""
            self.stdout.write(f"{c.name}{suffix}\n    {c.description}")

    def _print(self, report: integrity.Report) -> None:
        for result in report.results:
            if result.error:
                # Always shown, whatever the verbosity: a check that cannot run is never
                # mistaken for a check that found nothing.
                self.stderr.write(f"ERROR {result.name}: could not run: {result.error}")
                continue
            if self.verbosity < 1 or (result.ok and self.verbosity < 2):
                continue
            stream = self.stdout
            if result.ok:
                stream.write(f"ok    {result.name} ({result.seconds:.2f}s)")
                continue
            label = "FAIL " if result.failed else "WARN "
            stream.write(
                f"{label} {result.name}: {result.count} {result.subject}(s) — {result.description}"
            )
            shown = result.findings if self.verbosity >= 2 else result.findings[:SHOWN_AT_V1]
            for finding in shown:
                stream.write(f"      {finding.id}: {finding.detail}")
            if result.count > len(shown):
                stream.write(f"      … and {result.count - len(shown)} more")
            stream.write(f"      hint: {result.hint}")
        if self.verbosity >= 1:
            failed = sum(1 for r in report.results if r.status == "failed")
            errors = sum(1 for r in report.results if r.status == "error")
            self.stdout.write(
                f"{len(report.results)} check(s): "
                f"{sum(1 for r in report.results if r.ok)} ok, {failed} failed, "
                f"{len(report.warnings)} warning(s), {errors} could not run "
                f"(snapshot {report.snapshot_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"{report.seconds:.1f}s)"
            )
