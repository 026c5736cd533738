"""Pruning raw webhook bodies of old, finished receipts, keeping the audit trail."""

import logging
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Func, IntegerField, QuerySet, Sum
from django.db.models.functions import Coalesce, Now

from escrowsite.dbclock import db_now
from payments.models import FINAL_OUTCOMES, WebhookReceipt

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# Below this, --older-than is almost certainly a typo ("90" read as 90 seconds).
MIN_AGE = timedelta(days=1)


class PruneRefused(ValueError):
    """The cutoff asked for would prune receipts too young to let go of."""


@dataclass
class PruneReport:
    """One pruning run; in a dry run the counts are what would be pruned."""

    cutoff: datetime
    dry_run: bool
    receipts: int = 0
    bytes_freed: int = 0
    batches: int = 0
    failed_batches: list[dict[str, object]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "cutoff": self.cutoff,
            "dry_run": self.dry_run,
            "receipts_pruned": self.receipts,
            "bytes_freed": self.bytes_freed,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
        }


class _OctetLength(Func):
    function = "octet_length"
    output_field = IntegerField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # SQLite before 3.43 has no octet_length; length() of a BLOB counts its bytes.
        return self.as_sql(compiler, connection, function="length", **extra)


def _octet_length(column: str) -> Func:
    return _OctetLength(F(column))


def prunable_receipts(*, cutoff: datetime) -> QuerySet[WebhookReceipt]:
    """Receipts whose body may go: received before `cutoff`, at a final outcome, not
    flagged for staff, body not yet pruned.

    Never received or failed ones (payments_retry re-processes them from the body), and
    never flagged ones: a parked payment or a conflict awaiting staff is resolved by
    reading its body again (payments.staff).
    """
    return WebhookReceipt.objects.filter(
        received_at__lt=cutoff,
        outcome__in=FINAL_OUTCOMES,
        flagged=False,
        body_pruned_at__isnull=True,
    )


def cutoff_for(older_than: timedelta) -> datetime:
    """now() - older_than on the database clock. Raises PruneRefused under MIN_AGE."""
    if older_than < MIN_AGE:
        raise PruneRefused(
            f"refusing to prune receipts younger than {MIN_AGE.days} day(s) "
            f"(asked for {older_than}); use e.g. 90d"
        )
    return db_now() - older_than


def prune_receipts(
    *,
    older_than: timedelta,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    wrap: Callable[[Iterable[list[int]], int], Iterable[list[int]]] = lambda batches, n: batches,
) -> PruneReport:
    """Empty the raw body of every prunable receipt, one transaction per batch.

    Keeps everything else: body_sha256 and body_size (so the audit trail can still prove
    what arrived), headers, outcome, detail, links, and sets body_pruned_at. Rows another
    transaction holds are skipped (SKIP LOCKED) and left for the next run. A failed
    batch is logged with its traceback and reported; the run goes on with the next one.
    `wrap` decorates the stream of batches, given their number (a progress bar).
    """
    report = PruneReport(cutoff=cutoff_for(older_than), dry_run=dry_run)
    candidates = prunable_receipts(cutoff=report.cutoff)
    if dry_run:
        totals = candidates.aggregate(
            count=Count("pk"), size=Coalesce(Sum(_octet_length("body")), 0)
        )
        report.receipts, report.bytes_freed = totals["count"], totals["size"]
        return report

    total = -(-candidates.count() // batch_size)
    for ids in wrap(_batches(candidates, batch_size), total):
        try:
            with transaction.atomic(durable=True):
                # Re-checked under the lock; rows another transaction holds are skipped.
                rows = list(
                    candidates.filter(pk__in=ids)
                    .select_for_update(skip_locked=True)
                    .annotate(size=_octet_length("body"))
                    .values_list("pk", "size")
                )
                WebhookReceipt.objects.filter(pk__in=[pk for pk, _ in rows]).update(
                    body=b"", body_pruned_at=Now()
                )
        except Exception as exc:  # noqa: BLE001 - logged with traceback, reported, exit non-zero
            logger.error(
                "payments_prune: batch of receipts %s..%s failed", ids[0], ids[-1], exc_info=exc
            )
            report.failed_batches.append(
                {
                    "first_receipt": ids[0],
                    "last_receipt": ids[-1],
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": "".join(traceback.format_exception(exc)),
                }
            )
        else:
            report.batches += 1
            report.receipts += len(rows)
            report.bytes_freed += sum(size or 0 for _, size in rows)
    return report


def _batches(candidates: QuerySet[WebhookReceipt], size: int) -> Iterator[list[int]]:
    """Ids in pk order, `size` at a time; each batch starts past the last one, whatever
    happened to it, so a failing batch cannot stop the run or be tried forever."""
    after = 0
    while ids := list(
        candidates.filter(pk__gt=after).order_by("pk").values_list("pk", flat=True)[:size]
    ):
        yield ids
        after = ids[-1]
