"""The incident, repaired by staff in a real browser: Finance can, Support can only look."""

from decimal import Decimal

import pytest

from escrow.models import Escrow, EscrowStatus, StaffAction
from escrow.tests.admin_support import BUYER, incident_with_failed_delivery, staff_user
from payments.models import Outcome
from payments.tests.test_webhook import wallet

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _open_failed_queue_escrow(browser, escrow: Escrow) -> None:
    """From the index's failed-deliveries count to the escrow it names."""
    count = browser.find("#queue-failed .queue-count a")
    assert count.text == "1"
    browser.click(count)
    assert browser.path == "/admin/payments/webhookreceipt/"
    assert "Failed or stuck" in browser.text  # the queue filter is on
    browser.click(browser.link(escrow.escrow_id))
    assert browser.path == f"/admin/escrow/escrow/{escrow.pk}/change/"


def test_finance_finds_the_failed_delivery_previews_and_reprocesses_it(
    live_server, browser, monkeypatch
):
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    staff_user("fiona-finance", "Finance")
    browser.log_in(live_server.url, "fiona-finance", "pw")
    browser.screenshot("finance-01-index")

    _open_failed_queue_escrow(browser, escrow)
    page = browser.text
    assert "92.13" in page and "96.74" in page
    assert browser.find("#buyer-wallet").text.startswith("7.35 USD")
    delivery = browser.find(f"#delivery-{receipt.pk}")
    assert "failed" in delivery.text and "ZeroDivisionError" in delivery.text
    browser.screenshot("finance-02-escrow-before")

    browser.click(delivery.find_element("link text", f"#{receipt.pk}"))
    browser.click(browser.find("a.staff-action-reprocess"))
    preview = browser.find("#reprocess-preview")
    assert browser.find("#preview-outcome").text == "applied"
    assert browser.find("#preview-status").text == "payment_pending → payment_confirmed"
    assert "escrow_payment" in preview.text and "96.74" in preview.text
    assert "overpayment_credit" in preview.text and "4.26" in preview.text
    browser.screenshot("finance-03-reprocess-preview")
    escrow.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_PENDING  # the preview changed nothing

    browser.find("#id_reason").send_keys("DynoPay retries exhausted; incident ES101325WZY2")
    browser.click(browser.find("#staff-action-form input[type=submit]"))

    assert browser.path == f"/admin/escrow/escrow/{escrow.pk}/change/"
    assert "applied" in browser.find("ul.messagelist").text
    assert "Payment confirmed" in browser.find(".field-status").text
    assert browser.find("#buyer-wallet").text.startswith("11.61 USD")
    assert "96.74 USD — Held" in browser.find("#holding").text
    assert "reprocess_receipt by fiona-finance" in browser.find("#timeline").text
    browser.screenshot("finance-04-escrow-after")

    escrow.refresh_from_db()
    receipt.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_CONFIRMED
    assert receipt.outcome == Outcome.APPLIED
    assert wallet(BUYER) == Decimal("11.61")
    assert StaffAction.objects.get().actor.username == "fiona-finance"


def test_support_sees_the_escrow_but_no_action_that_moves_money(live_server, browser, monkeypatch):
    escrow, receipt = incident_with_failed_delivery(monkeypatch)
    staff_user("sam-support", "Support")
    browser.log_in(live_server.url, "sam-support", "pw")

    _open_failed_queue_escrow(browser, escrow)
    assert browser.find("#buyer-wallet").text.startswith("7.35 USD")
    assert browser.find(f"#delivery-{receipt.pk}")
    assert browser.find_all(".staff-action") == []  # no confirm, cancel, refund, release...
    browser.screenshot("support-01-escrow")

    browser.get(f"{live_server.url}/admin/payments/webhookreceipt/{receipt.pk}/change/")
    assert "ZeroDivisionError" in browser.text
    assert browser.find_all(".staff-action") == []  # no reprocess
    browser.get(f"{live_server.url}/admin/payments/webhookreceipt/?queue=failed")
    actions = [o.get_attribute("value") for o in browser.find_all("select[name=action] option")]
    assert "reprocess_selected" not in actions and "acknowledge_selected" not in actions

    url = f"/admin/payments/webhookreceipt/{receipt.pk}/actions/reprocess/"
    # Posting the action anyway, with a valid CSRF token from this session, is refused.
    status = browser.driver.execute_async_script(
        """
        const [url, done] = arguments;
        const body = new FormData();
        body.append("csrfmiddlewaretoken",
                    document.querySelector("input[name=csrfmiddlewaretoken]").value);
        body.append("reason", "support tries");
        fetch(url, {method: "POST", body, credentials: "same-origin"})
            .then(r => done(r.status), e => done(String(e)));
        """,
        url,
    )
    assert status == 403
    browser.get(f"{live_server.url}{url}")
    assert "403" in browser.text
    browser.screenshot("support-02-reprocess-refused")

    escrow.refresh_from_db()
    receipt.refresh_from_db()
    assert escrow.status == EscrowStatus.PAYMENT_PENDING
    assert receipt.outcome == Outcome.FAILED
    assert wallet(BUYER) == Decimal("7.35")
    assert not StaffAction.objects.exists()
