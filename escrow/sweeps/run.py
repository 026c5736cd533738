"""The whole sweep: plan, hand items to workers, report."""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from django.db import connections

from escrow.sweeps.items import _batched, run_item
from escrow.sweeps.rules import RULE_FOR_STATUS
from escrow.sweeps.selection import (
    BATCH_ACTIONS,
    Candidate,
    ItemResult,
    SweepReport,
    deadline_candidates,
    warning_candidates,
)
from escrowsite.dbclock import db_now

# --- the whole sweep -------------------------------------------------------------------


def plan_sweep(*, limit: int | None = None, warnings: bool = True) -> list[Candidate]:
    """Everything a sweep would look at now: overdue escrows, then warnings to send."""
    tasks = deadline_candidates(limit=limit)
    if warnings:
        tasks += warning_candidates(limit=limit)
    return tasks


def _handled(tasks: Sequence[Candidate], *, dry_run: bool, workers: int) -> Iterator[ItemResult]:
    """Each candidate's result, in completion order.

    With several workers, each is a thread with its own database connection (closed when
    it finishes): one item's commit waits on the WAL flush while another thread works,
    and PostgreSQL flushes the commits of concurrent sessions together. SKIP LOCKED and
    the re-check keep them apart exactly as they keep separate sweeps apart.
    """
    if workers <= 1 or len(tasks) <= 1:
        for candidate in tasks:
            yield run_item(candidate, dry_run=dry_run)
        return
    todo: queue.SimpleQueue[Candidate | None] = queue.SimpleQueue()
    done: queue.SimpleQueue[ItemResult | BaseException] = queue.SimpleQueue()
    for candidate in tasks:
        todo.put(candidate)

    def work() -> None:
        try:
            while (candidate := todo.get()) is not None:
                done.put(run_item(candidate, dry_run=dry_run))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, re-raised
            done.put(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=work, name=f"escrow-sweep-{n}", daemon=True)
        for n in range(min(workers, len(tasks)))
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(len(tasks)):
            result = done.get()
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        # Whether all is done or the caller stopped early: drop what is left, let each
        # worker finish its current item, then stop it.
        while True:
            try:
                todo.get_nowait()
            except queue.Empty:
                break
        for _ in threads:
            todo.put(None)
        for thread in threads:
            thread.join()


def run_sweep(
    *,
    dry_run: bool = False,
    limit: int | None = None,
    warnings: bool = True,
    workers: int = 1,
    wrap: Callable[[Iterable[ItemResult], int], Iterable[ItemResult]] = lambda items, total: items,
    on_result: Callable[[ItemResult], None] | None = None,
) -> SweepReport:
    """Plan, then handle each candidate in its own transaction; never stops at a failure.

    `workers` > 1 handles items in that many threads (see _handled). `wrap` decorates
    the stream of results, given their number (a progress bar); `on_result` sees each
    result as it comes (output lines).
    """
    report = SweepReport(started_at=db_now(), dry_run=dry_run)
    tasks = plan_sweep(limit=limit, warnings=warnings)
    batchable = [
        c
        for c in tasks
        if not dry_run and not c.is_warning and RULE_FOR_STATUS[c.status].action in BATCH_ACTIONS
    ]
    taken = {id(c) for c in batchable}
    rest = [c for c in tasks if id(c) not in taken]

    def results() -> Iterator[ItemResult]:
        yield from _batched(batchable)
        yield from _handled(rest, dry_run=dry_run, workers=workers)

    for result in wrap(results(), len(tasks)):
        report.items.append(result)
        if on_result is not None:
            on_result(result)
    return report
