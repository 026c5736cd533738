"""Benchmark wallets_check on ~1M ledger rows: bulk-seed with SQL, time the checker. By hand.

    SECRET_KEY=x .venv/bin/python benchmarks/check_bench.py
    SECRET_KEY=x .venv/bin/python benchmarks/check_bench.py --escrows 100000 --keep

It DROPS and recreates its own database (--db, default escrow_check_bench) on the server
of DATABASE_URL (default postgres://postgres@127.0.0.1:5432), migrates it, and seeds a
consistent history with a few set-based INSERT ... SELECT FROM generate_series statements
(no constraint or trigger is disabled): --escrows escrows (80% completed, 10% active, 5%
partially paid, 5% awaiting payment; one in ten completed ones overpaid), each paid one
with its holding, ledger transfers, transaction records, applied webhook receipt, dedupe
claim and status history. 380,000 escrows make about 1,000,000 transfers.

It then runs wallets_check in a fresh process (as cron would) on the healthy database,
plants the incident (a signed payment.confirmed receipt marked applied whose effects were
lost) and a hand-edited wallet balance, runs it again, and prints wall time, the time of
each check and the checker's peak RSS (getrusage). It asserts only that the healthy run
passes and the broken run names what was planted; the timings depend on the machine.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs in the child process: the checker exactly as `manage.py wallets_check --json`,
# followed by that process's own peak RSS.
DRIVER = """
import io, json, os, resource, sys, time
started = time.perf_counter()
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "escrowsite.settings")
django.setup()
from django.core.management import CommandError, call_command
out = io.StringIO()
began = time.perf_counter()
try:
    call_command("wallets_check", "--json", stdout=out)
    code = 0
except CommandError as exc:
    code = exc.returncode
done = time.perf_counter()
print(json.dumps({
    "code": code,
    "command_seconds": done - began,
    "process_seconds": done - started,
    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "report": json.loads(out.getvalue()),
}))
"""

SEED = [
    (
        "customers",
        """
        INSERT INTO wallets_customer (telegram_id, username, email, created_at)
        SELECT 8000000000 + c, 'bench' || c, '', now()
        FROM generate_series(0, %(customers)s - 1) c
        """,
    ),
    (
        "plan",
        """
        CREATE TEMP TABLE bench_escrow AS
        SELECT s.*, s.amount + s.fee AS total_due,
               CASE WHEN s.status = 'partially_paid' THEN round((s.amount + s.fee) / 2, 2)
                    ELSE s.amount + s.fee END AS paid
        FROM (
            SELECT p.*, greatest(round(p.amount * 0.05, 2), 1.00) AS fee
            FROM (
                SELECT i, 'ES' || lpad(i::text, 10, '0') AS eid,
                       CASE WHEN i %% 20 < 16 THEN 'completed'
                            WHEN i %% 20 < 18 THEN 'active'
                            WHEN i %% 20 = 18 THEN 'partially_paid'
                            ELSE 'payment_pending' END AS status,
                       (100 + i %% 900)::numeric + 0.13 AS amount,
                       i %% %(customers)s AS buyer,
                       (i + 1) %% %(customers)s AS seller,
                       (i %% 10 = 3 AND i %% 20 < 16) AS overpaid,
                       now() - interval '2 days' + i * interval '100 milliseconds' AS t0
                FROM generate_series(1, %(escrows)s) i
            ) p
        ) s
        """,
    ),
    (
        "escrows",
        """
        INSERT INTO escrow_escrow (
            id, escrow_id, description, amount, currency, fee_split, fee_amount, buyer_fee,
            seller_fee, total_due, status, delivery_hours, created_at, expires_at,
            payment_confirmed_at, seller_accepted_at, delivery_deadline, delivered_at,
            auto_release_at, completed_at, status_changed_at, provider, provider_payment_id,
            deposit_address, deposit_tx_hash, accepted_shortfall, admin_notes, buyer_id,
            seller_id)
        SELECT i, eid, '', amount, 'USD', 'buyer_pays', fee, fee, 0, total_due, status, 24, t0,
               CASE WHEN status IN ('payment_pending', 'partially_paid')
                    THEN t0 + interval '1 hour' END,
               CASE WHEN status IN ('completed', 'active') THEN t0 + interval '5 minutes' END,
               CASE WHEN status IN ('completed', 'active') THEN t0 + interval '10 minutes' END,
               CASE WHEN status IN ('completed', 'active')
                    THEN t0 + interval '5 minutes' + interval '24 hours' END,
               NULL, NULL,
               CASE WHEN status = 'completed' THEN t0 + interval '20 minutes' END,
               t0, 'dynopay',
               CASE WHEN status <> 'payment_pending' THEN 'pay' || i ELSE '' END, '',
               CASE WHEN status IN ('completed', 'active') THEN 'tx' || i ELSE '' END,
               0, '', 8000000000 + buyer, 8000000000 + seller
        FROM bench_escrow
        """,
    ),
    (
        "accounts",
        """
        INSERT INTO wallets_account (id, kind, currency, provider, balance, created_at,
                                     escrow_id, customer_id)
        SELECT 1, 'provider_clearing', 'USD', 'dynopay', 0, now(), NULL::bigint, NULL::bigint
        UNION ALL SELECT 2, 'platform_revenue', 'USD', '', 0, now(), NULL, NULL
        UNION ALL
        SELECT 10 + c, 'customer', 'USD', '', 0, now(), NULL, 8000000000 + c
        FROM generate_series(0, %(customers)s - 1) c
        UNION ALL
        SELECT 1000000 + i, 'escrow_holding', 'USD', '', 0, t0, i, NULL
        FROM bench_escrow WHERE status <> 'payment_pending'
        """,
    ),
    (
        "holdings",
        """
        INSERT INTO escrow_escrowholding (id, status, created_at, resolved_at, account_id,
                                          escrow_id)
        SELECT i, CASE status WHEN 'completed' THEN 'released' WHEN 'active' THEN 'held'
                              ELSE 'collecting' END,
               t0, CASE WHEN status = 'completed' THEN t0 + interval '20 minutes' END,
               1000000 + i, i
        FROM bench_escrow WHERE status <> 'payment_pending'
        """,
    ),
    (
        "transfers",
        """
        INSERT INTO wallets_transfer (id, created_at, kind, amount, currency, idempotency_key,
                                      reference, memo, actor_id, credit_account_id,
                                      debit_account_id, escrow_id, reverses_id)
        SELECT 4 * i, t0 + interval '5 minutes', 'escrow_payment', paid, 'USD',
               'dynopay:tx' || i || ':escrow_payment', 'dynopay:tx' || i, '', NULL::integer,
               1000000 + i, 1, i, NULL::bigint
        FROM bench_escrow WHERE status <> 'payment_pending'
        UNION ALL
        SELECT 4 * i + 1, t0 + interval '5 minutes', 'overpayment_credit', 1.00, 'USD',
               'dynopay:tx' || i || ':overpayment_credit', 'dynopay:tx' || i, '', NULL,
               10 + buyer, 1, i, NULL
        FROM bench_escrow WHERE overpaid
        UNION ALL
        SELECT 4 * i + 2, t0 + interval '20 minutes', 'escrow_release', amount, 'USD',
               'escrow:' || eid || ':release:seller', '', '', NULL, 10 + seller, 1000000 + i,
               i, NULL
        FROM bench_escrow WHERE status = 'completed'
        UNION ALL
        SELECT 4 * i + 3, t0 + interval '20 minutes', 'fee', fee, 'USD',
               'escrow:' || eid || ':release:fee', '', '', NULL, 2, 1000000 + i, i, NULL
        FROM bench_escrow WHERE status = 'completed'
        ORDER BY 1
        """,
    ),
    (
        "balances",
        """
        UPDATE wallets_account a SET balance = s.total
        FROM (
            SELECT id, sum(delta) AS total FROM (
                SELECT credit_account_id AS id, amount AS delta FROM wallets_transfer
                UNION ALL
                SELECT debit_account_id, -amount FROM wallets_transfer
            ) x GROUP BY id
        ) s
        WHERE s.id = a.id
        """,
    ),
    (
        "transaction records",
        """
        INSERT INTO wallets_transaction (id, transaction_id, type, amount, currency,
                                         crypto_amount, crypto_currency, status, provider,
                                         external_tx_id, description, created_at, confirmed_at,
                                         customer_id, escrow_id)
        SELECT 3 * i, 'ESC_' || eid || '_tx' || i, 'escrow_payment',
               paid + CASE WHEN overpaid THEN 1.00 ELSE 0 END, 'USD', 0.9187, 'LTC',
               'completed', 'dynopay', 'tx' || i, 'bench payment', t0, t0,
               8000000000 + buyer, i
        FROM bench_escrow WHERE status <> 'payment_pending'
        UNION ALL
        SELECT 3 * i + 1, 'OVP_' || eid || '_tx' || i, 'overpayment_credit', 1.00, 'USD',
               NULL, '', 'completed', 'dynopay', 'tx' || i, 'bench overpayment', t0, t0,
               8000000000 + buyer, i
        FROM bench_escrow WHERE overpaid
        UNION ALL
        SELECT 3 * i + 2, 'REL_' || eid, 'escrow_release', amount, 'USD', NULL, '',
               'completed', '', '', 'bench release', t0, t0, 8000000000 + seller, i
        FROM bench_escrow WHERE status = 'completed'
        ORDER BY 1
        """,
    ),
    (
        "record links",
        """
        INSERT INTO wallets_transaction_transfers (transaction_id, transfer_id)
        SELECT 3 * i, 4 * i FROM bench_escrow WHERE status <> 'payment_pending'
        UNION ALL SELECT 3 * i, 4 * i + 1 FROM bench_escrow WHERE overpaid
        UNION ALL SELECT 3 * i + 1, 4 * i + 1 FROM bench_escrow WHERE overpaid
        UNION ALL SELECT 3 * i + 2, 4 * i + 2 FROM bench_escrow WHERE status = 'completed'
        """,
    ),
    (
        "receipts",
        """
        INSERT INTO payments_webhookreceipt (
            id, provider, received_at, remote_ip, headers, body, body_size, body_sha256,
            body_pruned_at, signature_valid, event, tx_id, provider_payment_id, escrow_ref,
            payload_hash, outcome, detail, flagged, attempts, last_error, traceback,
            processed_at, response_status, escrow_id)
        SELECT i, 'dynopay', t0 + interval '5 minutes', '127.0.0.1', '{}'::jsonb,
               convert_to(body, 'UTF8'), octet_length(convert_to(body, 'UTF8')),
               md5(body) || md5(body), NULL, true, 'payment.confirmed', 'tx' || i, 'pay' || i,
               eid, md5('payload' || i) || md5('hash' || i), 'applied', 'bench', overpaid, 1,
               '', '', t0 + interval '5 minutes', 200, i
        FROM (
            SELECT e.*, json_build_object(
                'event', 'payment.confirmed', 'id', 'pay' || i, 'status', 'confirmed',
                'txId', 'tx' || i,
                'base_amount', (paid + CASE WHEN overpaid THEN 1.00 ELSE 0 END)::text,
                'base_currency', 'USD', 'paid_amount', '0.9187', 'paid_currency', 'LTC',
                'meta_data', json_build_object('refId', eid), 'created_at', t0)::text AS body
            FROM bench_escrow e WHERE status <> 'payment_pending'
        ) b
        """,
    ),
    (
        "dedupe claims",
        """
        INSERT INTO payments_paymentevent (id, provider, tx_id, event, payload_hash, created_at,
                                           receipt_id)
        SELECT i, 'dynopay', 'tx' || i, 'payment.confirmed',
               md5('payload' || i) || md5('hash' || i), t0, i
        FROM bench_escrow WHERE status <> 'payment_pending'
        """,
    ),
    (
        "status history",
        """
        INSERT INTO escrow_statuschange (from_status, to_status, at, source, reason, actor_id,
                                         escrow_id)
        SELECT from_status, to_status, at, source, '', NULL, i FROM (
            SELECT i, 0 AS step, 'created' AS from_status, 'payment_pending' AS to_status,
                   t0 AS at, 'create' AS source FROM bench_escrow
            UNION ALL
            SELECT i, 1, 'payment_pending', 'partially_paid', t0 + interval '5 minutes',
                   'webhook' FROM bench_escrow WHERE status = 'partially_paid'
            UNION ALL
            SELECT i, 1, 'payment_pending', 'payment_confirmed', t0 + interval '5 minutes',
                   'webhook' FROM bench_escrow WHERE status IN ('completed', 'active')
            UNION ALL
            SELECT i, 2, 'payment_confirmed', 'active', t0 + interval '10 minutes', 'bot'
            FROM bench_escrow WHERE status IN ('completed', 'active')
            UNION ALL
            SELECT i, 3, 'active', 'completed', t0 + interval '20 minutes', 'bot'
            FROM bench_escrow WHERE status = 'completed'
        ) moves
        ORDER BY i, step
        """,
    ),
]
SEQUENCES = [
    "escrow_escrow",
    "escrow_escrowholding",
    "wallets_account",
    "wallets_transfer",
    "wallets_transaction",
    "payments_webhookreceipt",
    "payments_paymentevent",
]


def _database_url(name: str) -> tuple[str, str]:
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    parts = urlsplit(base)
    admin = urlunsplit(parts._replace(path="/postgres"))
    return admin, urlunsplit(parts._replace(path=f"/{name}"))


def _recreate(admin_url: str, name: str, *, drop_only: bool = False) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{name}"')


def _seed(url: str, *, escrows: int, customers: int) -> dict[str, int]:
    import psycopg

    params = {"escrows": escrows, "customers": customers}
    with psycopg.connect(url) as conn:
        # Only this session's commit waits less for the disk; nothing is disabled.
        conn.execute("SET synchronous_commit = off")
        for label, sql in SEED:
            started = time.perf_counter()
            conn.execute(sql, params)
            print(f"  seeded {label:<20} {time.perf_counter() - started:6.1f}s", flush=True)
        for table in SEQUENCES:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        print(f"  vacuum analyze           {time.perf_counter() - started:6.1f}s", flush=True)
        counts = {}
        for table in (
            "wallets_transfer",
            "escrow_escrow",
            "wallets_account",
            "wallets_transaction",
            "payments_webhookreceipt",
            "escrow_statuschange",
        ):
            counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        counts["database size"] = size.fetchone()[0]
    return counts


def _break(url: str) -> dict[str, object]:
    """Plant the incident (an applied receipt whose effects were lost) and a hand edit."""
    import psycopg

    with psycopg.connect(url) as conn:
        escrow_pk, escrow_id = conn.execute(
            "SELECT id, escrow_id FROM escrow_escrow WHERE status = 'payment_pending' "
            "ORDER BY id LIMIT 1"
        ).fetchone()
        body = json.dumps(
            {
                "event": "payment.confirmed",
                "id": "pay-lost",
                "txId": "tx-lost",
                "base_amount": "101.00",
                "base_currency": "USD",
                "meta_data": {"refId": escrow_id},
            }
        ).encode()
        receipt_id = conn.execute(
            "INSERT INTO payments_webhookreceipt (provider, received_at, headers, body, "
            "body_size, body_sha256, signature_valid, event, tx_id, provider_payment_id, "
            "escrow_ref, payload_hash, outcome, detail, flagged, attempts, last_error, "
            "traceback, processed_at, response_status, escrow_id) VALUES ('dynopay', now(), "
            "'{}', %s, %s, '', true, 'payment.confirmed', 'tx-lost', 'pay-lost', %s, '', "
            "'applied', '', false, 1, '', '', now(), 200, %s) RETURNING id",
            [body, len(body), escrow_id, escrow_pk],
        ).fetchone()[0]
        wallet = conn.execute(
            "UPDATE wallets_account SET balance = balance + 4.26 "
            "WHERE id = (SELECT min(id) FROM wallets_account WHERE kind = 'customer') "
            "RETURNING id"
        ).fetchone()[0]
        conn.commit()
    return {"escrow": escrow_id, "receipt": receipt_id, "wallet": wallet}


def _run_checker(url: str) -> dict:
    env = {**os.environ, "DATABASE_URL": url}
    env.setdefault("SECRET_KEY", "check-bench")
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the checker process failed with exit code {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = wall
    return result


def _print_run(label: str, result: dict) -> None:
    report = result["report"]
    print(
        f"\n{label}: exit code {result['code']}, wallets_check {result['command_seconds']:.2f}s "
        f"(process {result['wall_seconds']:.2f}s incl. start-up), "
        f"peak RSS {result['maxrss_kb'] / 1024:.0f} MB, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    for check in sorted(report["checks"], key=lambda c: -c["seconds"]):
        print(
            f"  {check['seconds']:6.2f}s  {check['status']:<7} {check['name']}"
            + (f"  ({check['count']})" if check["count"] else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--escrows", type=int, default=380_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--db", default="escrow_check_bench")
    parser.add_argument("--keep", action="store_true", help="Keep the database afterwards.")
    args = parser.parse_args()

    admin_url, url = _database_url(args.db)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("SECRET_KEY", "check-bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "escrowsite.settings")
    print(f"cpus {os.cpu_count()}, load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    _recreate(admin_url, args.db)
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from django.db import connections

        connections.close_all()
        started = time.perf_counter()
        counts = _seed(url, escrows=args.escrows, customers=args.customers)
        print(
            f"seeded in {time.perf_counter() - started:.1f}s: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
        )

        healthy = _run_checker(url)
        _print_run("healthy database", healthy)
        assert healthy["code"] == 0, healthy["report"]["failed"]

        planted = _break(url)
        broken = _run_checker(url)
        _print_run(f"with the incident and a hand-edited wallet planted {planted}", broken)
        found = {c["name"]: c["ids"] for c in broken["report"]["checks"] if not c["ok"]}
        assert broken["code"] == 1
        assert planted["escrow"] in found["confirmed_payment_escrow_unfunded"], found
        assert planted["receipt"] in found["money_receipt_has_transfers"], found
        assert planted["wallet"] in found["balance_matches_ledger"], found
        print("\nfound:", ", ".join(sorted(found)))
        print(
            f"\nSUMMARY transfers {counts['wallets_transfer']}: healthy "
            f"{healthy['command_seconds']:.1f}s / {healthy['maxrss_kb'] / 1024:.0f} MB; "
            f"broken {broken['command_seconds']:.1f}s / {broken['maxrss_kb'] / 1024:.0f} MB "
            "(targets: under 20 s and 200 MB)"
        )
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            _recreate(admin_url, args.db, drop_only=True)


if __name__ == "__main__":
    main()
