"""Shared conventions for management commands: durations, progress, JSON, exit codes.

Every maintenance command: `help`, a thin `handle`, one transaction per item, keeps going
after a failed item, honours --verbosity, offers --json (and --dry-run where it changes
things), shows a progress bar on a terminal and plain lines under cron, and exits
non-zero when it found or hit a problem.
"""

import json
import re
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder

T = TypeVar("T")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'90d', '5m', '36h', '300' (seconds) -> timedelta. Raises CommandError otherwise."""
    match = _DURATION.match(text or "")
    if not match:
        raise CommandError(f"not a duration: {text!r} (use e.g. 300s, 5m, 36h, 90d, 2w)")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def progress(items: Iterable[T], *, total: int, command: BaseCommand, label: str) -> Iterator[T]:
    """Yield items, drawing a progress bar on a terminal (never under cron or --json)."""
    stream = command.stdout._out  # the real stream behind OutputWrapper
    verbosity = getattr(command, "verbosity", 1)  # handle() sets it from --verbosity/--json
    show = total > 0 and getattr(stream, "isatty", lambda: False)() and verbosity >= 1
    for index, item in enumerate(items, start=1):
        if show:
            width = 30
            filled = int(width * index / total)
            stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {index}/{total}")
            stream.flush()
        yield item
    if show:
        stream.write("\n")


def emit_json(command: BaseCommand, data: Any) -> None:
    command.stdout.write(json.dumps(data, cls=DjangoJSONEncoder, indent=2, sort_keys=True))


def fail(message: str, code: int = 1) -> None:
    """Exit non-zero with a message on stderr (CommandError prints it without a traceback)."""
    raise CommandError(message, returncode=code)
