"""Webhook throughput benchmark (run by hand; prints figures, asserts nothing on time).

Serves the app with gunicorn on PostgreSQL, fires signed DynoPay webhooks from several
client processes (unique payments plus ~10% re-deliveries), prints throughput and
p50/p99 latency, then checks the ledger and the receipt log: nothing lost or doubled.

    .venv/bin/python benchmarks/webhook_bench.py --requests 5000 --clients 4 --workers 2
    .venv/bin/python benchmarks/webhook_bench.py --floor   # the contract alone, no business

It creates (and drops) its own database `escrow_bench` on DATABASE_URL's server (default
the local server on 127.0.0.1:5432).
"""

import argparse
import http.client
import io
import json
import multiprocessing as mp
import os
import random
import signal
import socket
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


def setup_data(count: int, history: int = 0) -> list[dict]:
    """Migrate, seed `history` escrows of past business (escrow_seed_scale: ledger,
    receipts, notifications; then VACUUM ANALYZE), and create `count` escrows awaiting
    payment; return their payments.

    The history matters: on empty tables the planner's cached plans for the webhook's
    prepared statements are sequential scans (right for a table of one page) that stay
    cached while the tables grow during the run. A database in service has history and
    statistics, so the benchmark starts from one.
    """
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    if history:
        call_command(
            "escrow_seed_scale", escrows=history, ledger_rows=history * 5, stdout=io.StringIO()
        )
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
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    payments = []
    for escrow in escrows:
        # Most pay exactly; some overpay (excess to the wallet); some pay half (partial).
        roll = random.random()
        paid = escrow.total_due
        if roll < 0.2:
            paid = escrow.total_due + Decimal("4.26")
        elif roll < 0.3:
            paid = (escrow.total_due / 2).quantize(Decimal("0.01"))
        payments.append(payment(escrow.escrow_id, paid))
    return payments


def payment(escrow_id: str, base_amount: Decimal) -> dict:
    """A confirmed DynoPay payment of `base_amount` USD for this escrow."""
    return {
        "event": "payment.confirmed",
        "id": f"pay_{uuid.uuid4().hex[:16]}",
        "status": "confirmed",
        "txId": str(uuid.uuid4()),
        "paid_amount": "0.5",
        "paid_currency": "LTC",
        "base_amount": str(base_amount),
        "base_currency": "USD",
        "meta_data": {"refId": escrow_id},
        "created_at": "2026-11-28T12:00:00Z",
    }


def setup_floor(count: int) -> list[dict]:
    """The floor app's two tables, and `count` payments like setup_data's (no escrows:
    the floor app reads nothing but the event)."""
    import django

    django.setup()
    from django.db import connection

    from benchmarks.floor_app import TABLES

    with connection.cursor() as cursor:
        cursor.execute(TABLES)
    amounts = (Decimal(random.randint(1000, 50000)) / 100 for _ in range(count))
    return [payment(f"ESB{i:09d}", amount) for i, amount in enumerate(amounts)]


def floor_invariants() -> dict:
    """Every delivery the floor app answered was committed with its effect."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE outcome = 'applied'), "
            "(SELECT count(*) FROM floor_effect) FROM floor_receipt"
        )
        receipts, applied, effects = cursor.fetchone()
    return {"receipts": receipts, "applied": applied, "effects": effects}


def client(args: tuple[str, int, list[bytes]]) -> list[tuple[float, int, float]]:
    """(latency, status, this client's CPU seconds so far) per delivery.

    Plain sockets and requests built before the clock starts: the clients share the two
    cores with the server and PostgreSQL, so the less CPU they use, the more the figures
    measure the app (http.client cost about three times as much per request)."""
    host, port, bodies = args
    from payments.signing import sign

    requests = [
        b"POST /webhooks/dynopay/ HTTP/1.1\r\n"
        + f"Host: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-DynoPay-Signature: {sign(body, SECRET)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
        for body in bodies
    ]
    cpu_start = time.process_time()
    results = []
    for request in requests:
        started = time.perf_counter()
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):  # the server closes after its response
                chunks.append(chunk)
        response = b"".join(chunks)
        # "HTTP/1.1 200 OK": the status code is the second word of the status line.
        status = int(response.split(b" ", 2)[1]) if response else 0
        results.append((time.perf_counter() - started, status, time.process_time() - cpu_start))
    return results


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(gunicorn_pid: int, database_url: str) -> dict[str, float]:
    """CPU used so far by the gunicorn workers and by the database's backends."""
    import psycopg

    children = Path(f"/proc/{gunicorn_pid}/task/{gunicorn_pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    with psycopg.connect(database_url, autocommit=True) as conn:
        backends = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
    return {
        "app": sum(_proc_cpu(pid) for pid in workers),
        "postgres": sum(_proc_cpu(pid) for pid in backends),
    }


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
    """The ledger invariants over the whole database (wallets.selectors), and the run's
    own payment records and receipts."""
    from dataclasses import asdict

    from payments.models import WebhookReceipt
    from wallets.models import Transaction
    from wallets.selectors import ledger_violations

    violations = ledger_violations()
    outcomes: dict[str, int] = {}
    # The run's own deliveries (the seeded history has receipts of its own).
    ours = WebhookReceipt.objects.filter(escrow_ref__startswith="ESB")
    for outcome in ours.values_list("outcome", flat=True):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "ledger_ok": not violations,
        "ledger_violations": {k: v for k, v in asdict(violations).items() if v},
        "payment_records": Transaction.objects.filter(
            type="escrow_payment", escrow__escrow_id__startswith="ESB"
        ).count(),
        "expected_payment_records": unique,
        "receipt_outcomes": outcomes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="gunicorn workers (default: one per core; sync workers are CPU-bound, and "
        "more than one per core measured slower)",
    )
    parser.add_argument("--duplicates", type=float, default=0.10)
    parser.add_argument(
        "--history",
        type=int,
        default=20_000,
        help="escrows of past business seeded first (0: start from empty tables)",
    )
    parser.add_argument("--port", type=int, default=8731)
    parser.add_argument(
        "--server-url",
        default=os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="serve benchmarks/floor_app.py instead: the webhook contract with no business "
        "in it (receipt, lock, one effect, outcome), the most this machine can do",
    )
    args = parser.parse_args()

    unique = int(args.requests / (1 + args.duplicates))
    database_url = recreate_database(args.server_url, "escrow_bench")
    os.environ.update(django_env(database_url))
    if args.floor:
        payments = setup_floor(unique)
        app = "benchmarks.floor_app"
    else:
        payments = setup_data(unique, args.history)
        app = "escrowsite.wsgi"
    bodies = [json.dumps(p).encode() for p in payments]
    duplicates = random.choices(bodies, k=args.requests - unique)
    stream = bodies + duplicates
    random.shuffle(stream)

    gunicorn = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            app,
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
        cpu_before = cpu_seconds(gunicorn.pid, database_url)
        started = time.perf_counter()
        with mp.get_context("spawn").Pool(args.clients) as pool:
            results = pool.map(client, [("127.0.0.1", args.port, c) for c in chunks])
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(gunicorn.pid, database_url)
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        gunicorn.wait(timeout=30)

    latencies = sorted(lat for chunk in results for lat, _, _ in chunk)
    statuses: dict[int, int] = {}
    for chunk in results:
        for _, status, _ in chunk:
            statuses[status] = statuses.get(status, 0) + 1
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"requests        {len(latencies)} ({unique} unique, {len(duplicates)} re-deliveries)")
    print(f"clients/workers {args.clients}/{args.workers}")
    print(f"elapsed         {elapsed:.2f} s")
    print(f"throughput      {len(latencies) / elapsed:.0f} webhooks/s")
    print(f"latency p50     {statistics.median(latencies) * 1000:.1f} ms")
    print(f"latency p99     {p99 * 1000:.1f} ms")
    # CPU per webhook is steadier than throughput on a shared machine, and says where the
    # time goes: the app (gunicorn workers), PostgreSQL (their backends), the clients.
    count = len(latencies)
    client_cpu = sum(cpu for chunk in results for _, _, cpu in chunk[-1:])
    print(
        "cpu/webhook     "
        f"app {(cpu_after['app'] - cpu_before['app']) / count * 1000:.2f} ms, "
        f"postgres {(cpu_after['postgres'] - cpu_before['postgres']) / count * 1000:.2f} ms, "
        f"clients {client_cpu / count * 1000:.2f} ms"
    )
    print(f"statuses        {statuses}")
    invariants = floor_invariants() if args.floor else check_invariants(unique)
    print("invariants      " + json.dumps(invariants, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
