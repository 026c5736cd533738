"""Webhook throughput benchmark (run by hand; prints figures, asserts nothing on time).

Serves the app with gunicorn on PostgreSQL, fires signed DynoPay webhooks from several
client processes (unique payments plus ~10% re-deliveries), prints throughput and
p50/p99 latency, then checks the ledger and the receipt log: nothing lost or doubled.

    .venv/bin/python benchmarks/webhook_bench.py --requests 5000 --clients 4 --workers 4

It creates (and drops) its own database `escrow_bench` on DATABASE_URL's server (default
the local server on 127.0.0.1:5432).
"""

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SECRET = "bench-webhook-secret"


def django_env(database_url: str) -> dict[str, str]:
    return os.environ | {
        "DATABASE_URL": database_url,
        "SECRET_KEY": "bench-secret-key",
        "DEBUG": "false",
        "DYNOPAY_WEBHOOK_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
        "NOTIFICATIONS_DISPATCH_AFTER_COMMIT": "false",
        "DJANGO_SETTINGS_MODULE": "escrowsite.settings",
    }


def recreate_database(server_url: str, name: str) -> str:
    import psycopg

    parsed = urlparse(server_url)
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return parsed._replace(path=f"/{name}").geturl()


def setup_data(count: int) -> list[dict]:
    """Migrate and create `count` escrows awaiting payment; return their payments."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from escrow.fees import compute_fees
    from escrow.models import Escrow, FeeSplit
    from wallets.models import Customer

    buyers = [Customer(telegram_id=1_000_000 + i) for i in range(count)]
    seller = Customer(telegram_id=999)
    Customer.objects.bulk_create([*buyers, seller])
    escrows = []
    for i in range(count):
        amount = Decimal(random.randint(1000, 50000)) / 100
        fees = compute_fees(amount=amount, fee_split=FeeSplit.BUYER_PAYS)
        escrows.append(
            Escrow(
                escrow_id=f"ESB{i:09d}",
                buyer_id=buyers[i].telegram_id,
                seller_id=seller.telegram_id,
                amount=amount,
                fee_amount=fees.fee_amount,
                buyer_fee=fees.buyer_fee,
                seller_fee=fees.seller_fee,
                total_due=fees.total_due,
            )
        )
    Escrow.objects.bulk_create(escrows, batch_size=2000)
    payments = []
    for escrow in escrows:
        # Most pay exactly; some overpay (excess to the wallet); some pay half (partial).
        roll = random.random()
        paid = escrow.total_due
        if roll < 0.2:
            paid = escrow.total_due + Decimal("4.26")
        elif roll < 0.3:
            paid = (escrow.total_due / 2).quantize(Decimal("0.01"))
        payments.append(
            {
                "event": "payment.confirmed",
                "id": f"pay_{uuid.uuid4().hex[:16]}",
                "status": "confirmed",
                "txId": str(uuid.uuid4()),
                "paid_amount": "0.5",
                "paid_currency": "LTC",
                "base_amount": str(paid),
                "base_currency": "USD",
                "meta_data": {"refId": escrow.escrow_id},
                "created_at": "2026-11-28T12:00:00Z",
            }
        )
    return payments


def client(args: tuple[str, int, list[bytes]]) -> list[tuple[float, int]]:
    host, port, bodies = args
    from payments.signing import sign

    results = []
    for body in bodies:
        headers = {"Content-Type": "application/json", "X-DynoPay-Signature": sign(body, SECRET)}
        started = time.perf_counter()
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/webhooks/dynopay/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        results.append((time.perf_counter() - started, response.status))
    return results


def wait_for(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1)
            conn.request("GET", "/admin/login/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not come up")


def check_invariants(unique: int) -> dict:
    """The ledger invariants (wallets.selectors) and the receipt log, after the run."""
    from dataclasses import asdict

    from payments.models import WebhookReceipt
    from wallets.models import Transaction
    from wallets.selectors import ledger_violations

    violations = ledger_violations()
    outcomes: dict[str, int] = {}
    for outcome in WebhookReceipt.objects.values_list("outcome", flat=True):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "ledger_ok": not violations,
        "ledger_violations": {k: v for k, v in asdict(violations).items() if v},
        "payment_records": Transaction.objects.filter(type="escrow_payment").count(),
        "expected_payment_records": unique,
        "receipt_outcomes": outcomes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument(
        "--server-url",
        default=os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args()

    unique = int(args.requests / (1 + args.duplicates))
    database_url = recreate_database(args.server_url, "escrow_bench")
    os.environ.update(django_env(database_url))
    payments = setup_data(unique)
    bodies = [json.dumps(p).encode() for p in payments]
    duplicates = random.choices(bodies, k=args.requests - unique)
    stream = bodies + duplicates
    random.shuffle(stream)

    gunicorn = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "escrowsite.wsgi",
            "-w",
            str(args.workers),
            "-b",
            f"127.0.0.1:{args.port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=django_env(database_url),
    )
    try:
        wait_for("127.0.0.1", args.port)
        chunks = [stream[i :: args.clients] for i in range(args.clients)]
        started = time.perf_counter()
        with mp.get_context("spawn").Pool(args.clients) as pool:
            results = pool.map(client, [("127.0.0.1", args.port, c) for c in chunks])
        elapsed = time.perf_counter() - started
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=30)

    latencies = sorted(lat for chunk in results for lat, _ in chunk)
    statuses: dict[int, int] = {}
    for chunk in results:
        for _, status in chunk:
            statuses[status] = statuses.get(status, 0) + 1
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"requests        {len(latencies)} ({unique} unique, {len(duplicates)} re-deliveries)")
    print(f"clients/workers {args.clients}/{args.workers}")
    print(f"elapsed         {elapsed:.2f} s")
    print(f"throughput      {len(latencies) / elapsed:.0f} webhooks/s")
    print(f"latency p50     {statistics.median(latencies) * 1000:.1f} ms")
    print(f"latency p99     {p99 * 1000:.1f} ms")
    print(f"statuses        {statuses}")
    print("invariants      " + json.dumps(check_invariants(unique), sort_keys=True, default=str))


if __name__ == "__main__":
    main()
