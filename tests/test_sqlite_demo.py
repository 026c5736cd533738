"""The maintenance commands the README gives demo users work on the embedded SQLite.

PostgreSQL is the production database and the rest of the suite runs on it; `make run`
uses SQLite, so these commands run here in child processes against a fresh demo database
built the way `make run` builds it (migrate, then escrow_seed_demo).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sqlite-demo-webhook-secret"

# Runs inside `manage.py shell`: a payment through the webhook code, then the clock moved
# on, so the sweep and the prune have work.
SCENARIO = f"""
import json
from datetime import timedelta
from django.utils import timezone
from escrow.models import Escrow
from payments.models import WebhookReceipt
from payments.services import handle_delivery
from payments.signing import SIGNATURE_HEADER, sign

body = json.dumps({{
    "event": "payment.confirmed", "id": "pay_demo1", "status": "confirmed",
    "txId": "6462e85a-12da-403c-8eeb-e1697b9bbbe7", "paid_amount": "0.9187",
    "paid_currency": "LTC", "base_amount": "101.00", "base_currency": "USD",
    "meta_data": {{"refId": "ES101325WZY2"}}, "created_at": "2025-10-13T14:11:40Z",
}}).encode()
answer = handle_delivery(
    body=body, headers={{SIGNATURE_HEADER: sign(body, "{SECRET}")}}, remote_ip="127.0.0.1"
)
assert answer.status == 200, answer.body
WebhookReceipt.objects.update(received_at=timezone.now() - timedelta(days=100))
now = timezone.now()
Escrow.objects.filter(escrow_id="ES101025DLVR").update(auto_release_at=now - timedelta(hours=1))
# Inside the payment deadline's warning window: half its window has passed.
Escrow.objects.filter(escrow_id="ES101325WZY2").update(status="payment_pending")
print(Escrow.objects.get(escrow_id="ES101325WZY2").status)
"""


@pytest.fixture
def demo(tmp_path):
    folder = tmp_path
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder / 'escrow.sqlite3'}",
        "DEBUG": "true",
        "SECRET_KEY": "sqlite-demo-secret-key",
        "DYNOPAY_WEBHOOK_SECRET": SECRET,
        "NOTIFICATIONS_DISPATCH_AFTER_COMMIT": "false",
        "NOTIFICATIONS_BOT_WEBHOOK_URL": "",
    }

    def manage(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and done.returncode != 0:
            pytest.fail(f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    manage("migrate", "--noinput")
    manage("escrow_seed_demo", "--base-url", "http://127.0.0.1:8000")
    return manage


def test_the_deadline_sweep_runs_and_acts_on_sqlite(demo):
    demo("shell", "-c", SCENARIO)

    preview = demo("escrow_sweep", "--dry-run", "--json")
    report = json.loads(preview.stdout)
    assert report["counts"]["would"] >= 1, preview.stdout
    assert report["counts"]["failed"] == 0

    done = demo("escrow_sweep", "--json")
    report = json.loads(done.stdout)
    assert report["counts"]["done"] == json.loads(preview.stdout)["counts"]["would"]
    released = [i for i in report["items"] if i["escrow_id"] == "ES101025DLVR"]
    assert released and released[0]["to_status"] == "completed", done.stdout

    again = json.loads(demo("escrow_sweep", "--json").stdout)
    assert again["counts"]["done"] == 0 and again["counts"]["failed"] == 0


def test_pruning_previews_and_prunes_old_receipt_bodies_on_sqlite(demo):
    demo("shell", "-c", SCENARIO)

    preview = demo("payments_prune", "--dry-run")
    assert preview.stdout.startswith("1 receipt(s)"), preview.stdout
    assert "would be pruned" in preview.stdout and "0 bytes" not in preview.stdout

    done = demo("payments_prune")
    assert done.stdout.startswith("1 receipt(s)") and "0 batch(es) failed" in done.stdout

    assert demo("payments_prune", "--dry-run").stdout.startswith("0 receipt(s)")


# The incident and three hand edits, each what one check exists to catch.
BREAKAGE = f"""
import json
from datetime import timedelta
from django.db.models import F
from django.utils import timezone
from escrow.models import Escrow
from payments.models import WebhookReceipt
from payments.services.receipts import record_failure, store_receipt
from payments.signing import SIGNATURE_HEADER, sign
from wallets.models import Account

def delivery(escrow_id, tx_id):
    body = json.dumps({{
        "event": "payment.confirmed", "id": "pay_" + tx_id, "status": "confirmed",
        "txId": tx_id, "paid_amount": "0.9187", "paid_currency": "LTC",
        "base_amount": "101.00", "base_currency": "USD", "meta_data": {{"refId": escrow_id}},
    }}).encode()
    return store_receipt(
        body=body, headers={{SIGNATURE_HEADER: sign(body, "{SECRET}")}}, remote_ip="127.0.0.1"
    )

# The incident: a signed confirmed payment whose processing failed; the escrow unfunded.
record_failure(receipt_id=delivery("ES101325WZY2", "tx-incident").pk, exc=RuntimeError("lost"))
# A delivery killed before its fields were stored: only the raw body names the escrow.
stuck = delivery("ES100725CNCL", "tx-killed")
WebhookReceipt.objects.filter(pk=stuck.pk).update(
    event="", escrow_ref="", tx_id="", received_at=timezone.now() - timedelta(hours=1)
)
# The incident's repair: a status set by hand, and a balance edited outside the ledger.
Escrow.objects.filter(escrow_id="ES101125ACTV").update(status="delivered")
Account.objects.filter(customer_id=5590563715).update(balance=F("balance") + 1)
"""


def test_the_integrity_checker_runs_on_sqlite_and_is_green_on_the_demo(demo):
    done = demo("wallets_check", "--json")

    report = json.loads(done.stdout)
    assert report["ok"] and not report["failed"], done.stdout
    assert len(report["checks"]) >= 20
    assert all(c["status"] == "ok" for c in report["checks"]), done.stdout


def test_the_integrity_checker_on_sqlite_finds_the_incident_and_hand_edits(demo):
    demo("shell", "-c", BREAKAGE)

    done = demo("wallets_check", "--json", check=False)

    assert done.returncode != 0
    report = json.loads(done.stdout)
    assert set(report["failed"]) == {
        "confirmed_payment_escrow_unfunded",
        "receipt_failed",
        "receipt_stuck_received",
        "escrow_status_matches_history",
        "balance_matches_ledger",
        "ledger_balanced",
    }, done.stdout
    checks = {c["name"]: c for c in report["checks"]}
    assert not [c for c in checks.values() if c["status"] == "error"], done.stdout
    # The parsed receipt and the one known only by its raw body.
    assert checks["confirmed_payment_escrow_unfunded"]["ids"] == ["ES100725CNCL", "ES101325WZY2"]
    assert checks["escrow_status_matches_history"]["ids"] == ["ES101125ACTV"]
