"""Benchmark escrow_sweep: seed overdue escrows with bulk inserts, time the sweep. By hand.

    .venv/bin/python benchmarks/sweep_bench.py --count 10000
    .venv/bin/python benchmarks/sweep_bench.py --count 10000 --workers 4
    .venv/bin/python benchmarks/sweep_bench.py --count 10000 --processes 2 --workers 4

It DROPS and recreates its own database (--db, default escrow_sweep_bench) on the server of
DATABASE_URL (default postgres://postgres@127.0.0.1:5432), migrates it, bulk-inserts
`--count` unpaid escrows past their payment window (fees computed by escrow.fees, so every
CHECK constraint holds) plus `--paid` paid escrows whose seller did not accept and
`--delivered` delivered ones past auto-release (these through the real services, slower to
seed), then times `escrow_sweep` in this process or in N concurrent OS processes, and
prints the figures. It makes no assertions: throughput depends on the machine.
"""

import argparse
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


def _seed(count: int, paid: int, delivered: int) -> None:
    from datetime import timedelta

    from django.db import connection, transaction

    from escrow import services
    from escrow.fees import compute_fees
    from escrow.models import Escrow, EscrowStatus, FeeSplit, StatusChange
    from escrow.sweeps import db_now
    from escrow.tests.factories import escrow_in_status
    from wallets.models import Customer

    now = db_now()
    customers = [Customer(telegram_id=8_000_000_000 + n) for n in range(200)]
    Customer.objects.bulk_create(customers, ignore_conflicts=True)
    started = time.perf_counter()
    batch = 5000
    for offset in range(0, count, batch):
        rows = []
        for n in range(offset, min(offset + batch, count)):
            amount = Decimal(10 + n % 990) + Decimal("0.25")
            fees = compute_fees(amount=amount, fee_split=FeeSplit.BUYER_PAYS)
            created = now - timedelta(hours=2, seconds=n % 3600)
            rows.append(
                Escrow(
                    escrow_id=f"BX{n:010d}",
                    buyer_id=customers[n % 200].pk,
                    seller_id=customers[(n + 1) % 200].pk,
                    amount=amount,
                    fee_split=FeeSplit.BUYER_PAYS,
                    fee_amount=fees.fee_amount,
                    buyer_fee=fees.buyer_fee,
                    seller_fee=fees.seller_fee,
                    total_due=fees.total_due,
                    status=EscrowStatus.PAYMENT_PENDING,
                    expires_at=created + timedelta(minutes=60),
                    status_changed_at=created,
                )
            )
        with transaction.atomic():
            made = Escrow.objects.bulk_create(rows)
            StatusChange.objects.bulk_create(
                StatusChange(
                    escrow=e,
                    from_status=EscrowStatus.CREATED,
                    to_status=EscrowStatus.PAYMENT_PENDING,
                    source="bench",
                )
                for e in made
            )
    print(f"seeded {count} overdue unpaid escrows in {time.perf_counter() - started:.1f}s")

    started = time.perf_counter()
    past = now - timedelta(days=4)
    for _ in range(paid):
        escrow_in_status(EscrowStatus.PAYMENT_CONFIRMED)
    for _ in range(delivered):
        escrow = escrow_in_status(EscrowStatus.ACTIVE)
        services.mark_delivered(escrow_id=escrow.escrow_id, now=past)
    Escrow.objects.filter(status=EscrowStatus.PAYMENT_CONFIRMED).update(expires_at=past)
    if paid or delivered:
        print(
            f"seeded {paid} unaccepted paid + {delivered} delivered escrows through the "
            f"services in {time.perf_counter() - started:.1f}s"
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def _sweep_in_process(dry_run: bool, workers: int) -> tuple[float, dict[str, int]]:
    from escrow.sweeps import run_sweep

    started, cpu = time.perf_counter(), time.process_time()
    report = run_sweep(dry_run=dry_run, warnings=not dry_run, workers=workers)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    handled = max(report.count("done") + report.count("would"), 1)
    # Python CPU per escrow bounds one process (GIL) whatever the machine: 1 / this.
    print(f"  python cpu {cpu:.2f}s = {cpu / handled * 1000:.2f} ms per escrow")
    return elapsed, report.as_json()["counts"]


def _sweep_in_processes(n: int, url: str, workers: int) -> tuple[float, list[dict[str, int]]]:
    import json

    env = os.environ | {
        "DATABASE_URL": url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only",
        "DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "escrow_sweep",
                "--json",
                "--workers",
                str(workers),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    outputs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - started
    counts = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode not in (0,):
            print(f"process exited {p.returncode}: {err[-2000:]}")
        counts.append(json.loads(out)["counts"] if out else {})
    return elapsed, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="escrow_sweep_bench")
    parser.add_argument("--count", type=int, default=10_000, help="overdue unpaid escrows")
    parser.add_argument("--paid", type=int, default=0, help="paid, seller did not accept")
    parser.add_argument("--delivered", type=int, default=0, help="delivered, past auto-release")
    parser.add_argument("--workers", type=int, default=1, help="escrow_sweep --workers")
    parser.add_argument("--processes", type=int, default=0, help="sweep in N OS processes")
    parser.add_argument("--seed-only", action="store_true", help="seed, then stop (profiling)")
    args = parser.parse_args()

    admin_url, url = _database_url(args.db)
    _recreate(admin_url, args.db)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The outbox's after-commit worker would deliver into the void; cron's real sweep
    # leaves delivery to notifications_dispatch as well.
    os.environ.setdefault("NOTIFICATIONS_DISPATCH_AFTER_COMMIT", "false")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "escrowsite.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _seed(args.count, args.paid, args.delivered)
    total = args.count + args.paid + args.delivered
    if args.seed_only:
        return

    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    print(f"load average before the sweep: {load}, cpus: {os.cpu_count()}")
    elapsed, counts = _sweep_in_process(dry_run=True, workers=1)
    print(f"dry run: {counts['would']} would be handled in {elapsed:.2f}s")
    if args.processes:
        from django.db import connections

        connections.close_all()
        elapsed, counts_list = _sweep_in_processes(args.processes, url, args.workers)
        done = sum(c.get("done", 0) for c in counts_list)
        print(
            f"{args.processes} processes: done per process {[c.get('done') for c in counts_list]}"
        )
    else:
        elapsed, counts = _sweep_in_process(dry_run=False, workers=args.workers)
        done = counts["done"]
        print(f"counts: {counts}")
    print(
        f"swept {done} of {total} escrows in {elapsed:.2f}s wall, --workers {args.workers}: "
        f"{done / elapsed:,.0f} escrows/s"
        + (" (including process start-up)" if args.processes else "")
    )


if __name__ == "__main__":
    main()
