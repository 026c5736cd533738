"""escrow_seed_scale: fill an empty database with a year of escrows and a big ledger, fast.

For benchmarking the back-office (benchmarks/admin_bench.py), never for real data: it
refuses a database that already has escrows. Everything is set-based SQL (INSERT ...
SELECT over generate_series), in one transaction, in an order in which every CHECK
constraint holds row by row:

- customers and their wallets; escrows spread over every status and a year of dates,
  with fees computed as escrow.fees computes them (total_due = amount + buyer_fee);
- a holding account and EscrowHolding per paid escrow; ledger transfers for payments,
  overpayments, releases and fees, refunds, parked (suspense) money, then late-payment
  credits and staff adjustments to customer wallets up to --ledger-rows transfers, so
  the provider's clearing account and one busy wallet have long histories;
- a transaction record per customer-facing transfer, linked to it; a webhook receipt per
  payment (some failed, stuck, parked, conflicting, flagged or unsigned) with its
  dedupe row; status history; notifications (some failing); staff actions; a few
  adjustment requests awaiting approval;
- last, every account's balance computed from the inserted transfers in one UPDATE, so
  balances equal their transfers and sum to zero (transfers themselves are append-only).

--database-check then verifies those ledger invariants in SQL and exits non-zero if one
fails. Finishes with VACUUM ANALYZE, so the planner (and the admin's estimated counts)
see the new rows.
"""

import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

from escrow.models import Escrow
from escrowsite.commands import emit_json, fail
from payments.parsing import PROVIDER
from wallets import ledger
from wallets.models import AccountKind

CUSTOMER_BASE = 7_000_000_000  # Telegram ids of seeded customers: 7000000001, ...
HOT_CUSTOMER = CUSTOMER_BASE + 1  # gets a tenth of the wallet credits: a long history
SEED_STAFF = "seed-staff"

# Status by bucket (0-99) of a hash of the escrow number: cumulative upper bounds.
STATUS_BUCKETS = [
    (2, "created"),
    (16, "payment_pending"),
    (18, "partially_paid"),
    (23, "payment_confirmed"),
    (31, "active"),
    (35, "delivered"),
    (36, "disputed"),
    (78, "completed"),
    (84, "refunded"),
    (92, "cancelled"),
    (100, "expired"),
]
PAID = ("partially_paid", "payment_confirmed", "active", "delivered", "disputed", "completed",
        "refunded")  # fmt: skip
FUNDED = ("payment_confirmed", "active", "delivered", "disputed")
CLOSED = ("completed", "refunded", "cancelled", "expired")
# The status history each final status went through.
PATHS = {
    "created": [],
    "payment_pending": [("created", "payment_pending")],
    "partially_paid": [("created", "payment_pending"), ("payment_pending", "partially_paid")],
    "payment_confirmed": [("created", "payment_pending"), ("payment_pending", "payment_confirmed")],
    "active": [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "active"),
    ],
    "delivered": [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "active"),
        ("active", "delivered"),
    ],
    "disputed": [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "active"),
        ("active", "disputed"),
    ],
    "completed": [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "active"),
        ("active", "delivered"),
        ("delivered", "completed"),
    ],
    "refunded": [
        ("created", "payment_pending"),
        ("payment_pending", "payment_confirmed"),
        ("payment_confirmed", "refunded"),
    ],
    "cancelled": [("created", "payment_pending"), ("payment_pending", "cancelled")],
    "expired": [("created", "payment_pending"), ("payment_pending", "expired")],
}


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# --- the SQL, step by step ---------------------------------------------------------------
# %(name)s parameters come from _params(); nothing user-supplied is formatted into SQL.

CUSTOMERS = """
INSERT INTO wallets_customer (telegram_id, username, email, created_at)
SELECT %(customer_base)s + g, 'user' || g, '', now() - interval '400 days' + g * interval '1 second'
FROM generate_series(1, %(customers)s) AS g;

INSERT INTO wallets_account (kind, currency, provider, balance, created_at, customer_id)
SELECT 'customer', 'USD', '', 0, created_at, telegram_id
FROM wallets_customer WHERE telegram_id > %(customer_base)s;
"""

_STATUS_CASE = (
    "CASE "
    + " ".join(f"WHEN bucket < {bound} THEN '{status}'" for bound, status in STATUS_BUCKETS)
    + " END"
)

ESCROWS = f"""
CREATE TEMP TABLE seed_escrow ON COMMIT DROP AS
WITH base AS (
    SELECT g AS n,
           (hashint4(g)::bigint + 2147483648) %% 100 AS bucket,
           (hashint4(-g)::bigint + 2147483648) AS h,
           (hashint4(g * 3)::bigint + 2147483648) %% %(customers)s AS b
    FROM generate_series(1, %(escrows)s) AS g
), plan AS (
    SELECT n, h, {_STATUS_CASE} AS status,
           'SC' || lpad(n::text, 10, '0') AS escrow_id,
           %(customer_base)s + 1 + b AS buyer_id,
           %(customer_base)s + 1
               + (b + 1 + (hashint4(g5)::bigint + 2147483648) %% (%(customers)s - 1))
               %% %(customers)s AS seller_id,
           (1000 + h %% 99000)::numeric / 100 AS amount,
           (ARRAY['buyer_pays', 'seller_pays', 'split'])[1 + n %% 3] AS fee_split,
           md5('pay' || n) AS tx
    FROM base, LATERAL (SELECT n * 5) AS x(g5)
), fees AS (
    SELECT *, greatest(round(amount * %(fee_percent)s / 100, 2), %(min_fee)s) AS fee
    FROM plan
), shares AS (
    SELECT *, CASE fee_split WHEN 'buyer_pays' THEN fee WHEN 'seller_pays' THEN 0
                             ELSE round(fee / 2, 2) END AS buyer_fee
    FROM fees
), times AS (
    -- Open escrows are recent (their deadlines run); closed ones spread over a year.
    SELECT *,
        CASE
            WHEN status IN ('created', 'payment_pending', 'partially_paid') THEN
                now() - (h %% (%(window_min)s - 1) + 1) * interval '1 minute'
                    -- three in a thousand sit past their payment window
                    - CASE WHEN h %% 1000 < 3 THEN %(window_min)s * interval '2 minute'
                           ELSE interval '0' END
            WHEN status = 'payment_confirmed' THEN
                now() - (h %% (%(response_h)s * 60 - 30) + 20) * interval '1 minute'
            WHEN status = 'active' THEN
                now() - (h %% (%(delivery_h)s * 60 - 90) + 80) * interval '1 minute'
            WHEN status = 'delivered' THEN
                now() - (h %% (%(release_h)s * 60 - 60) + 30) * interval '1 minute'
                    - interval '5 hours'
            WHEN status = 'disputed' THEN now() - (h %% 20 + 2) * interval '1 day'
            ELSE now() - interval '380 days' + n * (interval '365 days' / %(escrows)s)
        END AS created_at
    FROM shares
)
SELECT *,
    amount + buyer_fee AS total_due,
    fee - buyer_fee AS seller_fee,
    CASE WHEN status IN {_in(PAID)} AND status <> 'partially_paid'
         THEN created_at + interval '10 minutes' END AS paid_at
FROM times;

INSERT INTO escrow_escrow (
    escrow_id, description, amount, currency, fee_split, fee_amount, buyer_fee, seller_fee,
    total_due, status, delivery_hours, created_at, expires_at, payment_confirmed_at,
    seller_accepted_at, delivery_deadline, delivered_at, auto_release_at, completed_at,
    status_changed_at, provider, provider_payment_id, deposit_address, deposit_tx_hash,
    accepted_shortfall, admin_notes, buyer_id, seller_id)
SELECT
    escrow_id, 'Seeded deal #' || n, amount, 'USD', fee_split, fee, buyer_fee, seller_fee,
    total_due, status, %(delivery_h)s, created_at,
    CASE WHEN status IN ('created', 'payment_pending', 'partially_paid')
             THEN created_at + %(window_min)s * interval '1 minute'
         WHEN status = 'payment_confirmed' THEN paid_at + %(response_h)s * interval '1 hour'
    END,
    paid_at,
    CASE WHEN status IN ('active', 'delivered', 'disputed', 'completed')
         THEN paid_at + interval '30 minutes' END,
    CASE WHEN paid_at IS NOT NULL THEN paid_at + %(delivery_h)s * interval '1 hour' END,
    CASE WHEN status IN ('delivered', 'completed') THEN paid_at + interval '5 hours' END,
    CASE WHEN status = 'delivered'
         THEN paid_at + interval '5 hours' + %(release_h)s * interval '1 hour' END,
    CASE WHEN status IN ('completed', 'refunded') THEN paid_at + interval '6 hours' END,
    CASE status
        WHEN 'created' THEN created_at
        WHEN 'payment_pending' THEN created_at
        WHEN 'partially_paid' THEN created_at + interval '5 minutes'
        WHEN 'payment_confirmed' THEN paid_at
        WHEN 'active' THEN paid_at + interval '30 minutes'
        WHEN 'delivered' THEN paid_at + interval '5 hours'
        WHEN 'disputed' THEN paid_at + interval '1 day'
        WHEN 'completed' THEN paid_at + interval '6 hours'
        WHEN 'refunded' THEN paid_at + interval '6 hours'
        ELSE created_at + %(window_min)s * interval '1 minute'
    END,
    CASE WHEN status = 'created' THEN '' ELSE %(provider)s END,
    CASE WHEN status = 'created' THEN '' ELSE 'pay_' || substr(md5('pid' || n), 1, 12) END,
    CASE WHEN status = 'created' THEN '' ELSE 'ltc1q' || substr(md5('addr' || n), 1, 30) END,
    CASE WHEN status IN {_in(PAID)} THEN tx ELSE '' END,
    0, '', buyer_id, seller_id
FROM seed_escrow
ORDER BY created_at, n;
"""

HOLDINGS = f"""
INSERT INTO wallets_account (kind, currency, provider, balance, created_at, escrow_id)
SELECT 'escrow_holding', currency, '', 0,
       coalesce(payment_confirmed_at, created_at + interval '5 minutes'), id
FROM escrow_escrow WHERE status IN {_in(PAID)}
ORDER BY id;

INSERT INTO escrow_escrowholding (status, created_at, resolved_at, account_id, escrow_id)
SELECT CASE e.status WHEN 'partially_paid' THEN 'collecting' WHEN 'completed' THEN 'released'
                     WHEN 'refunded' THEN 'refunded' ELSE 'held' END,
       a.created_at,
       CASE WHEN e.status IN ('completed', 'refunded') THEN e.completed_at END,
       a.id, e.id
FROM escrow_escrow e JOIN wallets_account a ON a.escrow_id = e.id
ORDER BY e.id;
"""

# Every escrow-driven transfer; idempotency keys are 'seed:' + the transaction record id
# of the customer-facing record (fees have none) so the two can be linked by a join.
ESCROW_TRANSFERS = """
CREATE TEMP TABLE seed_transfer ON COMMIT DROP AS
SELECT * FROM (
    -- the payment: provider clearing -> holding (half of it for a partial payment)
    SELECT coalesce(e.payment_confirmed_at, e.created_at + interval '5 minutes') AS created_at,
           'escrow_payment' AS kind,
           CASE WHEN e.status = 'partially_paid' THEN round(e.total_due / 2, 2)
                ELSE e.total_due END AS amount,
           'seed:ESC_' || e.escrow_id || '_' || left(e.deposit_tx_hash, 8) AS idempotency_key,
           %(provider)s || ':' || e.deposit_tx_hash AS reference,
           %(clearing)s::bigint AS debit, h.id AS credit, e.id AS escrow_id, NULL::int AS actor
    FROM escrow_escrow e JOIN wallets_account h ON h.escrow_id = e.id
    UNION ALL
    -- one payment in ten paid a little more: the rest credited to the buyer's wallet
    SELECT e.payment_confirmed_at, 'overpayment_credit', 1 + (e.id %% 500)::numeric / 100,
           'seed:OVP_' || e.escrow_id || '_' || left(e.deposit_tx_hash, 8),
           %(provider)s || ':' || e.deposit_tx_hash, %(clearing)s, w.id, e.id, NULL
    FROM escrow_escrow e
    JOIN wallets_account w ON w.customer_id = e.buyer_id AND w.kind = 'customer'
    WHERE e.payment_confirmed_at IS NOT NULL AND e.id %% 10 = 0
    UNION ALL
    -- release: the seller's share to their wallet, the fee to platform revenue
    SELECT e.completed_at, 'escrow_release', e.amount - e.seller_fee,
           'seed:REL_' || e.escrow_id, '', h.id, w.id, e.id, NULL
    FROM escrow_escrow e JOIN wallets_account h ON h.escrow_id = e.id
    JOIN wallets_account w ON w.customer_id = e.seller_id AND w.kind = 'customer'
    WHERE e.status = 'completed'
    UNION ALL
    SELECT e.completed_at, 'fee', e.fee_amount, 'seed:FEE_' || e.escrow_id, '',
           h.id, %(revenue)s, e.id, NULL
    FROM escrow_escrow e JOIN wallets_account h ON h.escrow_id = e.id
    WHERE e.status = 'completed'
    UNION ALL
    -- refund: everything held back to the buyer's wallet
    SELECT e.completed_at, 'escrow_refund', e.total_due, 'seed:REF_' || e.escrow_id, '',
           h.id, w.id, e.id, NULL
    FROM escrow_escrow e JOIN wallets_account h ON h.escrow_id = e.id
    JOIN wallets_account w ON w.customer_id = e.buyer_id AND w.kind = 'customer'
    WHERE e.status = 'refunded'
    UNION ALL
    -- payments for no known escrow, parked in suspense
    SELECT now() - g * interval '37 hours', 'suspense', 5 + g::numeric,
           'seed:SUSP_' || md5('susp' || g), %(provider)s || ':' || md5('susp' || g),
           %(clearing)s, %(suspense)s, NULL, NULL
    FROM generate_series(1, %(parked)s) AS g
) AS t;
"""

# Filler up to --ledger-rows: late payments credited to the buyers of closed escrows
# (a tenth of them to one busy customer) and staff adjustments. Credits only, so no
# wallet can go below zero.
FILLER_TRANSFERS = f"""
CREATE TEMP TABLE seed_closed ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY id) AS k, id, escrow_id, buyer_id, status_changed_at
FROM escrow_escrow WHERE status IN {_in(CLOSED)};

INSERT INTO seed_transfer
SELECT c.status_changed_at + (g %% 10000) * interval '1 minute',
       CASE WHEN g %% 5 = 0 THEN 'staff_adjustment' ELSE 'late_payment_credit' END,
       (50 + g %% 5000)::numeric / 100,
       CASE WHEN g %% 5 = 0 THEN 'seed:ADJ_' || g
            ELSE 'seed:LATE_' || c.escrow_id || '_' || g END,
       CASE WHEN g %% 5 = 0 THEN 'staff:seed' ELSE %(provider)s || ':' || md5('late' || g) END,
       CASE WHEN g %% 5 = 0 THEN %(adjustments)s ELSE %(clearing)s END,
       w.id,
       CASE WHEN g %% 5 = 0 THEN NULL ELSE c.id END,
       CASE WHEN g %% 5 = 0 THEN %(staff)s END
FROM generate_series(1, %(filler)s) AS g
JOIN seed_closed c ON c.k = 1 + (g::bigint * 7919) %% %(closed)s
JOIN wallets_account w ON w.kind = 'customer'
    AND w.customer_id = CASE WHEN g %% 10 = 1 THEN %(hot_customer)s ELSE c.buyer_id END;
"""

TRANSFERS = """
INSERT INTO wallets_transfer (
    created_at, kind, amount, currency, idempotency_key, reference, memo, actor_id,
    credit_account_id, debit_account_id, escrow_id, reverses_id)
SELECT created_at, kind, amount, 'USD', idempotency_key, reference, '', actor, credit, debit,
       escrow_id, NULL
FROM seed_transfer ORDER BY created_at, idempotency_key;
"""

TRANSACTIONS = """
INSERT INTO wallets_transaction (
    transaction_id, type, amount, currency, crypto_amount, crypto_currency, status, provider,
    external_tx_id, description, created_at, confirmed_at, customer_id, escrow_id)
SELECT substr(t.idempotency_key, 6), t.kind, t.amount, 'USD',
       CASE WHEN t.kind = 'escrow_payment' THEN round(t.amount / 110, 8) END,
       CASE WHEN t.kind = 'escrow_payment' THEN 'LTC' ELSE '' END,
       'completed',
       CASE WHEN t.reference LIKE %(provider_prefix)s THEN %(provider)s ELSE '' END,
       CASE WHEN t.reference LIKE %(provider_prefix)s THEN substr(t.reference, %(cut)s)
            ELSE '' END,
       'Seeded ' || replace(t.kind, '_', ' '), t.created_at, t.created_at,
       coalesce(a.customer_id, e.buyer_id), t.escrow_id
FROM wallets_transfer t
JOIN wallets_account a ON a.id = t.credit_account_id
LEFT JOIN escrow_escrow e ON e.id = t.escrow_id
WHERE t.idempotency_key LIKE 'seed:%%' AND t.kind <> 'fee'
ORDER BY t.id;

INSERT INTO wallets_transaction_transfers (transaction_id, transfer_id)
SELECT x.id, t.id FROM wallets_transaction x
JOIN wallets_transfer t ON t.idempotency_key = 'seed:' || x.transaction_id;
"""

_BODY = """convert_to(json_build_object(
    'event', 'payment.confirmed', 'id', ppid, 'status', 'confirmed', 'txId', tx,
    'paid_amount', round(usd / 110, 8)::text, 'paid_currency', 'LTC',
    'base_amount', usd::text, 'base_currency', 'USD',
    'meta_data', json_build_object('refId', ref),
    'created_at', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))::text, 'UTF8')"""

RECEIPTS = f"""
CREATE TEMP TABLE seed_receipt ON COMMIT DROP AS
SELECT * FROM (
    -- one applied delivery per payment and per late payment
    SELECT t.created_at - interval '2 seconds' AS at, substr(t.reference, %(cut)s) AS tx,
           coalesce(e.provider_payment_id, '') AS ppid, coalesce(e.escrow_id, '') AS ref,
           t.escrow_id AS escrow_pk, t.amount AS usd, 'applied' AS outcome,
           CASE WHEN t.kind = 'late_payment_credit'
                THEN 'late payment credited to the buyer''s wallet'
                ELSE 'payment applied' END AS detail,
           -- a few late credits still wait for a look; the rest were acknowledged
           -- (the filler number ends the key: seed:LATE_<escrow>_<n>; n = 1 is always there)
           (t.kind = 'late_payment_credit'
            AND split_part(t.idempotency_key, '_', 3)::int %% 2000 = 1) AS flagged,
           true AS signed, 1 AS attempts, '' AS error
    FROM wallets_transfer t LEFT JOIN escrow_escrow e ON e.id = t.escrow_id
    WHERE t.kind IN ('escrow_payment', 'late_payment_credit')
      AND t.idempotency_key LIKE 'seed:%%'
    UNION ALL
    -- parked: money for an escrow id nobody knows, in suspense
    SELECT t.created_at - interval '2 seconds', substr(t.reference, %(cut)s), '',
           'SX' || upper(substr(md5(t.reference), 1, 10)), NULL, t.amount, 'parked',
           'no escrow with this reference: parked in suspense', true, true, 1, ''
    FROM wallets_transfer t WHERE t.kind = 'suspense' AND t.idempotency_key LIKE 'seed:%%'
    UNION ALL
    -- failed: one awaiting-payment escrow in fifty had its delivery fail (the incident)
    SELECT e.created_at + interval '5 minutes', md5('fail' || e.id), e.provider_payment_id,
           e.escrow_id, e.id, e.total_due + 4, 'failed', '', false, true, 3,
           'OperationalError: server closed the connection unexpectedly'
    FROM (SELECT *, row_number() OVER (ORDER BY id) AS k FROM escrow_escrow
          WHERE status = 'payment_pending') AS e
    WHERE e.k %% 50 = 1
    UNION ALL
    -- conflicts: the same payment event again with a different amount
    SELECT e.payment_confirmed_at + interval '1 hour', e.deposit_tx_hash,
           e.provider_payment_id, e.escrow_id, e.id, e.total_due + 100, 'conflict',
           'same event, different payload', true, true, 1, ''
    FROM (SELECT *, row_number() OVER (ORDER BY id) AS k FROM escrow_escrow
          WHERE status = 'active') AS e
    WHERE e.k %% 400 = 1
    UNION ALL
    -- unsigned: someone probing the endpoint
    SELECT now() - g * interval '17 hours', md5('probe' || g), '', 'ES' || g, NULL, 1,
           'unauthenticated', 'bad or missing signature', false, false, 0, ''
    FROM generate_series(1, %(probes)s) AS g
) AS r;

INSERT INTO payments_webhookreceipt (
    provider, received_at, remote_ip, headers, body, body_size, body_sha256, body_pruned_at,
    signature_valid, event, tx_id, provider_payment_id, escrow_ref, payload_hash, escrow_id,
    outcome, detail, flagged, attempts, last_error, traceback, processed_at, response_status)
SELECT %(provider)s, at, '203.0.113.7', '{{}}'::jsonb, body, length(body),
       encode(sha256(body), 'hex'), NULL, signed,
       CASE WHEN signed THEN 'payment.confirmed' ELSE '' END,
       CASE WHEN signed THEN tx ELSE '' END,
       CASE WHEN signed THEN ppid ELSE '' END,
       CASE WHEN signed THEN ref ELSE '' END,
       CASE WHEN signed THEN encode(sha256(body || '\\x01'::bytea), 'hex') ELSE '' END,
       escrow_pk, outcome, detail, flagged, attempts, error,
       CASE WHEN error <> '' THEN 'Traceback (most recent call last):' || chr(10)
            || '  File "payments/services.py", in run_processing' || chr(10) || error
            ELSE '' END,
       at + interval '40 milliseconds',
       CASE outcome WHEN 'applied' THEN 200 WHEN 'parked' THEN 202 WHEN 'failed' THEN 500
                    WHEN 'conflict' THEN 409 ELSE 401 END
FROM (SELECT r.*, {_BODY} AS body FROM seed_receipt r) AS b
ORDER BY at;

INSERT INTO payments_paymentevent (provider, tx_id, event, payload_hash, created_at, receipt_id)
SELECT provider, tx_id, event, payload_hash, received_at, id
FROM payments_webhookreceipt WHERE outcome IN ('applied', 'parked')
ORDER BY id;
"""

STATUS_CHANGES = """
INSERT INTO escrow_statuschange (from_status, to_status, at, source, reason, actor_id, escrow_id)
SELECT p.from_status, p.to_status,
       CASE p.to_status
           WHEN 'payment_pending' THEN e.created_at
           WHEN 'partially_paid' THEN e.created_at + interval '5 minutes'
           WHEN 'payment_confirmed' THEN e.payment_confirmed_at
           WHEN 'active' THEN e.seller_accepted_at
           WHEN 'delivered' THEN e.delivered_at
           ELSE e.status_changed_at
       END,
       CASE WHEN p.to_status IN ('payment_confirmed', 'partially_paid') THEN 'webhook'
            WHEN p.to_status IN ('expired', 'completed') THEN 'sweep' ELSE 'bot' END,
       '', NULL, e.id
FROM escrow_escrow e
JOIN seed_path p ON p.status = e.status
ORDER BY e.id, p.step;
"""

NOTIFICATIONS = """
INSERT INTO notifications_notification (
    key, event, channel, payload, status, attempts, next_attempt_at, last_error, created_at,
    sent_at, customer_id, escrow_id)
SELECT 'seed:' || escrow_id || ':' || event, event, 'bot_webhook',
       jsonb_build_object('escrow_id', escrow_id, 'event', event),
       status, CASE status WHEN 'sent' THEN 1 WHEN 'failed' THEN 3 ELSE 8 END,
       CASE status WHEN 'failed' THEN now() + interval '10 minutes' END,
       CASE status WHEN 'sent' THEN '' ELSE 'bot webhook answered 502' END,
       at, CASE status WHEN 'sent' THEN at + interval '1 second' END,
       customer_id, escrow_pk
FROM (
    -- two in a thousand failing: one failed (will retry), one given up
    SELECT e.escrow_id, e.id AS escrow_pk, ev.*,
           CASE row_number() OVER (ORDER BY e.id, ev.event) %% 1000
               WHEN 7 THEN 'failed' WHEN 9 THEN 'dead' ELSE 'sent' END AS status
    FROM escrow_escrow e
    CROSS JOIN LATERAL (VALUES
        ('payment_confirmed', e.payment_confirmed_at, e.buyer_id),
        ('escrow_released', CASE WHEN e.status = 'completed' THEN e.completed_at END,
         e.seller_id)
    ) AS ev(event, at, customer_id)
    WHERE ev.at IS NOT NULL
) AS n
ORDER BY at;
"""

STAFF_ACTIONS = """
INSERT INTO escrow_staffaction (at, action, reason, target, changes, actor_id, escrow_id)
SELECT e.status_changed_at + interval '1 hour',
       (ARRAY['extend_deadline', 'refund_escrow', 'acknowledge_receipt',
              'confirm_payment_by_hand'])[1 + g %% 4],
       'seeded for the admin benchmark', 'escrow ' || e.escrow_id,
       jsonb_build_object('seeded', true), %(staff)s, e.id
FROM generate_series(1, %(staff_actions)s) AS g
JOIN escrow_escrow e
    ON e.id = (SELECT min(id) FROM escrow_escrow) + (g::bigint * 7919) %% %(escrows)s
ORDER BY 1;

INSERT INTO wallets_adjustmentrequest (
    customer_id, amount, currency, reason, requested_by_id, requested_at, idempotency_key,
    status, decided_by_id, decided_at, decision_reason, transfer_id)
SELECT %(customer_base)s + g * 11, 250 + g, 'USD', 'seeded goodwill credit', %(staff)s,
       now() - g * interval '1 hour', '', 'pending', NULL, NULL, '', NULL
FROM generate_series(1, 5) AS g;
"""

BALANCES = """
UPDATE wallets_account a SET balance = s.balance
FROM (
    SELECT account_id, sum(delta) AS balance FROM (
        SELECT credit_account_id AS account_id, amount AS delta FROM wallets_transfer
        UNION ALL
        SELECT debit_account_id, -amount FROM wallets_transfer
    ) AS legs GROUP BY account_id
) AS s
WHERE a.id = s.account_id AND a.balance <> s.balance;
"""

CHECKS = {
    "accounts whose balance differs from their transfers": """
        SELECT count(*) FROM wallets_account a
        LEFT JOIN (SELECT credit_account_id AS id, sum(amount) AS s FROM wallets_transfer
                   GROUP BY 1) c ON c.id = a.id
        LEFT JOIN (SELECT debit_account_id AS id, sum(amount) AS s FROM wallets_transfer
                   GROUP BY 1) d ON d.id = a.id
        WHERE a.balance <> coalesce(c.s, 0) - coalesce(d.s, 0)""",
    "currencies whose balances do not sum to zero": """
        SELECT count(*) FROM (SELECT currency FROM wallets_account GROUP BY currency
                              HAVING sum(balance) <> 0) AS x""",
    "customer wallets or holdings below zero": """
        SELECT count(*) FROM wallets_account
        WHERE kind IN ('customer', 'escrow_holding') AND balance < 0""",
    "funded escrows whose holding is not their total due": f"""
        SELECT count(*) FROM escrow_escrow e JOIN wallets_account a ON a.escrow_id = e.id
        WHERE e.status IN {_in(FUNDED)} AND a.balance <> e.total_due""",
    "closed escrows whose holding is not empty": """
        SELECT count(*) FROM escrow_escrow e JOIN wallets_account a ON a.escrow_id = e.id
        WHERE e.status IN ('completed', 'refunded') AND a.balance <> 0""",
}

TABLES = [
    "wallets_customer",
    "wallets_account",
    "escrow_escrow",
    "escrow_escrowholding",
    "escrow_statuschange",
    "escrow_staffaction",
    "wallets_transfer",
    "wallets_transaction",
    "wallets_transaction_transfers",
    "payments_webhookreceipt",
    "payments_paymentevent",
    "notifications_notification",
    "wallets_adjustmentrequest",
]


class Command(BaseCommand):
    help = (
        "Fill an EMPTY database with benchmark data: --escrows escrows over a year and every "
        "status, --ledger-rows ledger transfers with consistent balances, and their receipts, "
        "records, history and notifications (set-based SQL, one transaction)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--escrows", type=int, default=200_000)
        parser.add_argument(
            "--ledger-rows",
            type=int,
            default=1_000_000,
            help="Total ledger transfers; at least what the escrows themselves need.",
        )
        parser.add_argument(
            "--customers", type=int, default=0, help="Default: a quarter of --escrows."
        )
        parser.add_argument(
            "--database-check",
            action="store_true",
            help="Afterwards, verify the ledger invariants in SQL; exit 1 if one fails.",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            fail("escrow_seed_scale needs PostgreSQL (set DATABASE_URL).")
        escrows = options["escrows"]
        if escrows < 100:
            fail("--escrows must be at least 100.")
        if Escrow.objects.exists():
            fail("The database already has escrows: escrow_seed_scale fills an empty one only.")
        self.verbosity = 0 if options["json"] else options["verbosity"]
        report: dict[str, Any] = {"steps": {}}
        started = time.perf_counter()
        with transaction.atomic(durable=True):
            params = self._params(escrows, options["customers"] or max(escrows // 4, 100))
            self._seed(params, options["ledger_rows"], report)
        self._step(report, "vacuum analyze", lambda cursor: self._vacuum(cursor))
        report["seconds"] = round(time.perf_counter() - started, 1)
        with connection.cursor() as cursor:
            report["rows"] = {table: self._count(cursor, table) for table in TABLES}
        problems = {}
        if options["database_check"]:
            with connection.cursor() as cursor:
                for label, sql in CHECKS.items():
                    cursor.execute(sql)
                    if found := cursor.fetchone()[0]:
                        problems[label] = found
            report["check"] = problems or "ok"
        if options["json"]:
            emit_json(self, report)
        else:
            for table, rows in report["rows"].items():
                self.stdout.write(f"{table:<32}{rows:>12,}")
            self.stdout.write(f"seeded in {report['seconds']}s")
            if options["database_check"]:
                self.stdout.write(f"database check: {report['check']}")
        if problems:
            fail(f"The seeded ledger is inconsistent: {problems}")

    def _params(self, escrows: int, customers: int) -> dict[str, Any]:
        staff, _ = get_user_model().objects.get_or_create(username=SEED_STAFF)
        return {
            "escrows": escrows,
            "customers": customers,
            "customer_base": CUSTOMER_BASE,
            "hot_customer": HOT_CUSTOMER,
            "fee_percent": settings.ESCROW_FEE_PERCENT,
            "min_fee": settings.ESCROW_MIN_FEE,
            "window_min": settings.ESCROW_PAYMENT_WINDOW_MINUTES,
            "response_h": settings.ESCROW_SELLER_RESPONSE_HOURS,
            "delivery_h": settings.ESCROW_DEFAULT_DELIVERY_HOURS,
            "release_h": settings.ESCROW_AUTO_RELEASE_HOURS,
            "provider": PROVIDER,
            "provider_prefix": f"{PROVIDER}:%",
            "cut": len(PROVIDER) + 2,
            "clearing": ledger.clearing_account(provider=PROVIDER).pk,
            "revenue": ledger.system_account(kind=AccountKind.PLATFORM_REVENUE).pk,
            "suspense": ledger.system_account(kind=AccountKind.SUSPENSE).pk,
            "adjustments": ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS).pk,
            "staff": staff.pk,
            "parked": max(escrows // 2000, 5),
            "probes": max(escrows // 1000, 5),
            "staff_actions": max(escrows // 100, 10),
        }

    def _seed(self, params: dict[str, Any], ledger_rows: int, report: dict[str, Any]) -> None:
        def run(sql: str, extra: dict[str, Any] | None = None) -> Any:
            return lambda cursor: cursor.execute(sql, {**params, **(extra or {})})

        with connection.cursor() as cursor:
            # Foreign keys are DEFERRABLE INITIALLY DEFERRED: check them per statement, not
            # millions at commit.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(
                "CREATE TEMP TABLE seed_path (status text, step int, from_status text, "
                "to_status text) ON COMMIT DROP"
            )
            cursor.executemany(
                "INSERT INTO seed_path VALUES (%s, %s, %s, %s)",
                [
                    (status, step, a, b)
                    for status, path in PATHS.items()
                    for step, (a, b) in enumerate(path)
                ],
            )
        self._step(report, "customers and wallets", run(CUSTOMERS))
        self._step(report, "escrows", run(ESCROWS))
        self._step(report, "holdings", run(HOLDINGS))
        self._step(report, "escrow transfers", run(ESCROW_TRANSFERS))
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM seed_transfer")
            needed = cursor.fetchone()[0]
            cursor.execute(f"SELECT count(*) FROM escrow_escrow WHERE status IN {_in(CLOSED)}")
            closed = cursor.fetchone()[0]
        filler = max(ledger_rows - needed, 0)
        if filler and not closed:
            fail("No closed escrows to hang late payments on: use more --escrows.")
        if filler:
            extra = {"filler": filler, "closed": closed}
            self._step(report, "filler transfers", run(FILLER_TRANSFERS, extra))
        self._step(report, "ledger transfers", run(TRANSFERS))
        self._step(report, "transaction records", run(TRANSACTIONS))
        self._step(report, "webhook receipts", run(RECEIPTS))
        self._step(report, "status history", run(STATUS_CHANGES))
        self._step(report, "notifications", run(NOTIFICATIONS))
        self._step(report, "staff actions", run(STAFF_ACTIONS))
        self._step(report, "account balances", run(BALANCES))

    def _step(self, report: dict[str, Any], label: str, action: Any) -> None:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            action(cursor)
        elapsed = round(time.perf_counter() - started, 1)
        report["steps"][label] = elapsed
        if self.verbosity >= 1:
            self.stdout.write(f"{label}: {elapsed}s")

    def _vacuum(self, cursor: Any) -> None:
        for table in TABLES:
            cursor.execute(f"VACUUM (ANALYZE) {table}")

    def _count(self, cursor: Any, table: str) -> int:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]
