"""notifications_dispatch: deliver due outbox rows (bot webhook, email), once or in a loop."""

import json
import signal
import threading
from argparse import ArgumentTypeError
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from notifications import selectors
from notifications.dispatch import (
    DispatchReport,
    ItemResult,
    channel_status,
    dispatch_due,
    preview_due,
)

EXIT_FAILED = 1
EXIT_WAITING = 3


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ArgumentTypeError("must be more than 0")
    return value


class Command(BaseCommand):
    help = (
        "Deliver due notifications from the outbox: the signed webhook to the bot and/or "
        "email. Safe to run alongside other dispatchers and the web process's after-commit "
        "worker: each row is claimed by one of them. A failed delivery is recorded on its "
        "row and retried later with backoff; the run keeps going. Exit code 0 when every "
        "due row was sent (or nothing was due), 1 when any delivery failed or gave up, "
        "3 when due rows are waiting because their channel is not configured."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--once", action="store_true", help="One pass over what is due now (the default)."
        )
        mode.add_argument(
            "--loop",
            action="store_true",
            help="Pass after pass until SIGTERM/SIGINT, sleeping --interval between passes.",
        )
        parser.add_argument(
            "--interval",
            type=_positive_float,
            default=10.0,
            metavar="S",
            help="Seconds between passes with --loop (default 10).",
        )
        parser.add_argument(
            "--max-passes",
            type=_positive_int,
            metavar="N",
            help="With --loop, stop after N passes (default: run until stopped).",
        )
        parser.add_argument(
            "--limit",
            type=_positive_int,
            metavar="N",
            help="At most N deliveries per pass (default: everything due).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List what is due and would be sent; send nothing, write nothing.",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="Machine-readable output (with --loop, one JSON line per pass).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.json = options["json"]
        self.verbosity = 0 if self.json else options["verbosity"]
        if options["dry_run"]:
            report = preview_due(limit=options["limit"])
            self._show(report, dry_run=True, pretty=True)
            self._exit(report, failed=0)
            return
        if not options["loop"]:
            report = dispatch_due(limit=options["limit"], on_item=self._progress_for_pass())
            self._end_progress()
            self._show(report, dry_run=False, pretty=True)
            self._exit(report, failed=len(report.failures))
            return
        failed, last = self._loop(options["interval"], options["max_passes"], options["limit"])
        self._exit(last, failed=failed)

    # --- loop ----------------------------------------------------------------------------

    def _loop(
        self, interval: float, max_passes: int | None, limit: int | None
    ) -> tuple[int, DispatchReport]:
        stop = threading.Event()
        restore = self._stop_on_signals(stop)
        failed, passes, report = 0, 0, DispatchReport()
        try:
            while not stop.is_set():
                report = dispatch_due(limit=limit, on_item=self._item_line, stop=stop)
                passes += 1
                failed += len(report.failures)
                if report.items or self.verbosity >= 2:
                    # Quiet when idle, so a log under systemd shows only what happened.
                    self._show(report, dry_run=False, pretty=False)
                if max_passes is not None and passes >= max_passes:
                    break
                stop.wait(interval)
        finally:
            restore()
        return failed, report

    def _stop_on_signals(self, stop: threading.Event) -> Any:
        """Finish the current batch, then stop; a signal never interrupts a send midway."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in previous:
            signal.signal(sig, lambda signum, frame: stop.set())

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # --- output --------------------------------------------------------------------------

    def _progress_for_pass(self) -> Any:
        """A per-item callback: item lines at -v2, a bar on a terminal at -v1."""
        stream: TextIO = self.stdout._out
        self._bar_total = 0
        if self.verbosity == 1 and getattr(stream, "isatty", lambda: False)():
            ready, _ = channel_status()
            self._bar_total = selectors.due_notifications(
                now=timezone.now(), channels=ready
            ).count()
        self._bar_done = 0

        def on_item(item: ItemResult) -> None:
            if self._bar_total:
                self._bar_done += 1
                total = max(self._bar_total, self._bar_done)
                filled = 30 * self._bar_done // total
                stream.write(
                    f"\rdispatching [{'#' * filled}{'.' * (30 - filled)}] {self._bar_done}/{total}"
                )
                stream.flush()
            else:
                self._item_line(item)

        return on_item

    def _end_progress(self) -> None:
        if self._bar_total:
            self.stdout._out.write("\n")

    def _item_line(self, item: ItemResult) -> None:
        if self.verbosity >= 2 or (self.verbosity == 1 and not item.ok):
            line = f"{item.outcome:<10} #{item.id} {item.key} (attempt {item.attempts})"
            if item.error:
                line += f": {item.error}"
            if item.next_attempt_at:
                line += f"; next try {item.next_attempt_at:%Y-%m-%d %H:%M:%S}"
            self.stdout.write(line)

    def _show(self, report: DispatchReport, *, dry_run: bool, pretty: bool) -> None:
        if self.json:
            data = {
                "dry_run": dry_run,
                "sent": report.count("sent"),
                "failed": report.count("failed"),
                "dead": report.count("dead"),
                "lease_lost": report.count("lease_lost"),
                "due": report.count("due"),
                "waiting": {
                    channel: {"count": count, "reason": reason}
                    for channel, (count, reason) in report.waiting.items()
                },
                "items": [item.__dict__ for item in report.items],
            }
            self.stdout.write(
                json.dumps(
                    data, cls=DjangoJSONEncoder, sort_keys=True, indent=2 if pretty else None
                )
            )
            return
        if self.verbosity < 1:
            return
        if dry_run:
            for item in report.items:
                self.stdout.write(
                    f"would send #{item.id} {item.key} (attempt {item.attempts + 1})"
                    + (f"; last error: {item.error}" if item.error else "")
                )
            summary = f"{len(report.items)} due"
        else:
            summary = (
                f"{report.count('sent')} sent, {report.count('failed')} failed, "
                f"{report.count('dead')} gave up"
            )
            if report.count("lease_lost"):
                summary += f", {report.count('lease_lost')} lost their lease"
        for channel, (count, reason) in report.waiting.items():
            summary += f"; {count} waiting on {channel} ({reason})"
        self.stdout.write(summary)

    def _exit(self, report: DispatchReport, *, failed: int) -> None:
        if failed:
            raise CommandError(f"{failed} notification(s) not delivered", returncode=EXIT_FAILED)
        if report.waiting:
            raise CommandError(
                f"{report.waiting_count} due notification(s) waiting for channel settings",
                returncode=EXIT_WAITING,
            )
