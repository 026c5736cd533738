"""Benchmark the back-office at scale: seed a big database, time the admin pages. By hand.

    .venv/bin/python benchmarks/admin_bench.py                      # 200k escrows, 1M ledger rows
    .venv/bin/python benchmarks/admin_bench.py --escrows 20000 --ledger-rows 100000
    .venv/bin/python benchmarks/admin_bench.py --reuse              # keep the seeded database
    .venv/bin/python benchmarks/admin_bench.py --reuse --explain 5  # plans of queries > 5 ms

It DROPS and recreates its own database (--db, default escrow_admin_bench) on the server of
DATABASE_URL (default postgres://postgres@127.0.0.1:5432), migrates it, seeds it with
`escrow_seed_scale --database-check`, logs a superuser in with Django's test Client and
requests each page --repeat times after one warm-up request, printing a markdown table of
the median milliseconds, the number of SQL queries and the slowest query per page, with
the machine's load average. With --reuse an existing seeded database is only migrated
(new indexes) and measured. It makes no assertions: timings depend on the machine.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _database_url(name: str) -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(base)
    admin = urlunsplit(parts._replace(path="/postgres"))
    return admin, urlunsplit(parts._replace(path=f"/{name}"))


def _recreate(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _load() -> str:
    with open("/proc/loadavg") as loadavg:
        one, five, fifteen = loadavg.read().split()[:3]
    return f"{one} {five} {fifteen} (1/5/15 min) on {os.cpu_count()} cpus"


def _pages() -> list[tuple[str, str]]:
    """(label, url) of every page measured, chosen from the seeded data."""
    from django.db.models import Count, Max
    from django.urls import reverse
    from django.utils import timezone

    from escrow.models import Escrow
    from payments.models import Outcome, WebhookReceipt
    from wallets.models import Account, AccountKind

    def change(name: str, pk: int) -> str:
        return reverse(f"admin:{name}_change", args=[pk])

    def changelist(name: str, **query: str) -> str:
        url = reverse(f"admin:{name}_changelist")
        return f"{url}?{urlencode(query)}" if query else url

    receipts, history = "payments_webhookreceipt", "escrow_statuschange"
    # As the admin's date filters write them: aware midnights.
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    today = midnight.date()
    busy = (
        Escrow.objects.filter(status="completed")
        .annotate(n=Count("transfers"))
        .order_by("-n", "pk")
        .values_list("pk", "escrow_id", "deposit_tx_hash", "buyer_id")
        .first()
    )
    escrow_pk, escrow_id, tx_hash, buyer = busy
    failed = WebhookReceipt.objects.filter(outcome=Outcome.FAILED).values_list("pk", flat=True)[0]
    clearing = Account.objects.get(kind=AccountKind.PROVIDER_CLEARING).pk
    hot_wallet = (
        Account.objects.filter(kind=AccountKind.CUSTOMER)
        .annotate(n=Count("credits"))
        .order_by("-n")
        .values_list("pk", flat=True)
        .first()
    )
    wallet = Account.objects.get(kind=AccountKind.CUSTOMER, customer_id=buyer).pk
    oldest_half = Account.objects.filter(pk=clearing).aggregate(m=Max("debits__pk"))["m"] // 2
    return [
        ("admin index (work queues)", reverse("admin:index")),
        ("escrows", changelist("escrow_escrow")),
        ("escrows: status=completed", changelist("escrow_escrow", status__exact="completed")),
        ("escrows: status=disputed", changelist("escrow_escrow", status__exact="disputed")),
        ("escrows: provider=dynopay", changelist("escrow_escrow", provider="dynopay")),
        ("escrows: provider none", changelist("escrow_escrow", provider="-")),
        (
            "escrows: created past 7 days",
            changelist(
                "escrow_escrow",
                created_at__gte=str(midnight - timedelta(days=7)),
                created_at__lt=str(midnight + timedelta(days=1)),
            ),
        ),
        (
            "escrows: paid this year",
            changelist(
                "escrow_escrow",
                payment_confirmed_at__gte=str(midnight.replace(month=1, day=1)),
                payment_confirmed_at__lt=str(midnight.replace(year=today.year + 1, month=1, day=1)),
            ),
        ),
        ("escrows: not paid", changelist("escrow_escrow", payment_confirmed_at__isnull="True")),
        ("escrows: failed/parked deliveries", changelist("escrow_escrow", deliveries="problem")),
        ("escrows: past a deadline", changelist("escrow_escrow", deadline="past")),
        ("escrows: search escrow id", changelist("escrow_escrow", q=escrow_id)),
        ("escrows: search tx hash", changelist("escrow_escrow", q=tx_hash)),
        ("escrows: search customer id", changelist("escrow_escrow", q=str(buyer))),
        ("escrow timeline page", change("escrow_escrow", escrow_pk)),
        ("receipts", changelist("payments_webhookreceipt")),
        ("receipts: queue failed", changelist("payments_webhookreceipt", queue="failed")),
        ("receipts: queue parked", changelist("payments_webhookreceipt", queue="parked")),
        ("receipts: queue late", changelist("payments_webhookreceipt", queue="late")),
        ("receipts: outcome=applied", changelist(receipts, outcome__exact="applied")),
        (
            "receipts: outcome=unauthenticated",
            changelist("payments_webhookreceipt", outcome__exact="unauthenticated"),
        ),
        ("receipts: flagged", changelist("payments_webhookreceipt", flagged__exact="1")),
        ("receipts: unsigned", changelist("payments_webhookreceipt", signature_valid__exact="0")),
        ("receipts: search tx id", changelist("payments_webhookreceipt", q=tx_hash)),
        ("receipts: search escrow id", changelist("payments_webhookreceipt", q=escrow_id)),
        ("receipt page (failed)", change("payments_webhookreceipt", failed)),
        ("accounts", changelist("wallets_account")),
        ("accounts: kind=customer", changelist("wallets_account", kind__exact="customer")),
        ("accounts: search customer id", changelist("wallets_account", q=str(buyer))),
        ("account ledger: clearing (~686k rows)", change("wallets_account", clearing)),
        (
            "account ledger: clearing, older page",
            change("wallets_account", clearing) + f"?before={oldest_half}",
        ),
        ("account ledger: busiest wallet", change("wallets_account", hot_wallet)),
        ("account ledger: a buyer's wallet", change("wallets_account", wallet)),
        ("transfers", changelist("wallets_transfer")),
        ("transfers: kind=fee", changelist("wallets_transfer", kind__exact="fee")),
        ("transfers: kind=suspense", changelist("wallets_transfer", kind__exact="suspense")),
        ("transfers: search reference", changelist("wallets_transfer", q=f"dynopay:{tx_hash}")),
        ("transaction records", changelist("wallets_transaction")),
        (
            "transaction records: type=escrow_refund",
            changelist("wallets_transaction", type__exact="escrow_refund"),
        ),
        ("transaction records: search tx", changelist("wallets_transaction", q=tx_hash)),
        ("customers", changelist("wallets_customer")),
        ("customers: search username", changelist("wallets_customer", q="user4242")),
        ("notifications", changelist("notifications_notification")),
        ("notifications: failing", changelist("notifications_notification", queue="failing")),
        ("status changes", changelist("escrow_statuschange")),
        ("status changes: to=disputed", changelist(history, to_status__exact="disputed")),
        ("staff actions", changelist("escrow_staffaction")),
        ("escrow holdings: status=held", changelist("escrow_escrowholding", status__exact="held")),
    ]


def _measure(client, url: str, repeat: int) -> tuple[float, int, float, str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up: caches, the page's plan, the OS page cache
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    queries = captured.captured_queries  # of the last request
    slowest = max(queries, key=lambda q: float(q["time"]))
    return statistics.median(times), len(queries), float(slowest["time"]) * 1000, slowest["sql"]


def _explain(sql: str) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="escrow_admin_bench")
    parser.add_argument("--escrows", type=int, default=200_000)
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page")
    parser.add_argument("--reuse", action="store_true", help="keep an already seeded --db")
    parser.add_argument("--only", default="", help="measure pages whose label contains this")
    parser.add_argument(
        "--explain",
        type=float,
        default=0,
        metavar="MS",
        help="EXPLAIN ANALYZE each page's slowest query if it took more than MS",
    )
    args = parser.parse_args()

    admin_url, url = _database_url(args.db)
    if not args.reuse:
        _recreate(admin_url, args.db)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("NOTIFICATIONS_DISPATCH_AFTER_COMMIT", "false")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "escrowsite.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.test.utils import setup_test_environment

    from escrow.models import Escrow

    call_command("migrate", verbosity=0)
    if not Escrow.objects.exists():
        started = time.perf_counter()
        print(f"seeding {args.escrows:,} escrows, {args.ledger_rows:,} ledger rows; load {_load()}")
        call_command(
            "escrow_seed_scale",
            escrows=args.escrows,
            ledger_rows=args.ledger_rows,
            database_check=True,
            verbosity=1,
        )
        print(f"seeded in {time.perf_counter() - started:.0f}s")

    setup_test_environment()  # the test Client's host is allowed
    user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)

    print(f"\nload before: {_load()}")
    print(f"escrows: {Escrow.objects.count():,}")
    rows = []
    for label, page in _pages():
        if args.only and args.only not in label:
            continue
        ms, count, slowest_ms, slowest_sql = _measure(client, page, args.repeat)
        rows.append((label, ms, count, slowest_ms))
        print(f"  {label:<42} {ms:8.1f} ms  {count:3d} queries  slowest {slowest_ms:7.1f} ms")
        if args.explain and slowest_ms > args.explain:
            print(slowest_sql)
            print(_explain(slowest_sql))
    print(f"load after: {_load()}\n")
    print("| page | ms (median) | queries | slowest query ms |")
    print("| --- | ---: | ---: | ---: |")
    for label, ms, count, slowest_ms in rows:
        print(f"| {label} | {ms:.0f} | {count} | {slowest_ms:.1f} |")


if __name__ == "__main__":
    main()
