"""Shared by the receipt admin's parts and the escrow admin: links, and processing for staff.

Every page that processes a delivery (a repair on one receipt, a bulk reprocess, the escrow
admin's confirm-by-hand) reports it through `delivery_done`, so staff read one kind of
message whichever page they used; `reprocess_preview` is the dry run both reprocess pages show.
"""

from typing import Any

from django.contrib import messages
from django.http import HttpRequest
from django.urls import reverse

from escrow.models import Escrow
from escrowsite.admin import Done
from payments import services
from payments.models import RETRYABLE_OUTCOMES, Outcome, WebhookReceipt
from wallets.models import Account

# Flagged outcomes a person can look at and close (payments.staff.acknowledge_receipt).
ACKNOWLEDGEABLE = (Outcome.APPLIED, Outcome.CONFLICT, Outcome.DUPLICATE)


def admin_url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


def delivery_done(response: services.DeliveryResponse) -> Done:
    """Turn a processing response into the message staff see, and where they go next."""
    body = response.body
    receipt_id = body.get("receipt")
    receipt_url = admin_url("payments_webhookreceipt_change", receipt_id)
    if response.status >= 500:
        error = (
            WebhookReceipt.objects.filter(pk=receipt_id)
            .values_list("last_error", flat=True)
            .first()
        )
        return Done(
            f"Processing delivery #{receipt_id} failed and nothing was applied: {error}. "
            "The failure and its traceback are recorded on the receipt.",
            messages.ERROR,
            receipt_url,
        )
    escrow_pk = None
    if body.get("escrow_id"):
        escrow_pk = (
            Escrow.objects.filter(escrow_id=body["escrow_id"]).values_list("pk", flat=True).first()
        )
    applied = body.get("outcome") == Outcome.APPLIED
    return Done(
        f"Delivery #{receipt_id}: {body.get('outcome')} — {body.get('detail')}",
        messages.SUCCESS if applied else messages.WARNING,
        admin_url("escrow_escrow_change", escrow_pk) if escrow_pk else receipt_url,
    )


def reprocess_preview(request: HttpRequest, receipt: WebhookReceipt) -> dict[str, Any]:
    """What reprocessing would do now: computed for real, then rolled back."""
    if receipt.outcome not in RETRYABLE_OUTCOMES:
        return {"preview_final": receipt.outcome}
    response = services.retry_receipt(receipt_id=receipt.pk, dry_run=True, actor_id=request.user.pk)
    body = response.body
    ids = {
        t[side] for t in body.get("transfers", []) for side in ("debit_account", "credit_account")
    }
    accounts = Account.objects.in_bulk(ids) if ids else {}

    def label(account_id: int) -> Any:
        # An account the dry run opened (a first holding, a first wallet) was rolled back.
        return accounts.get(account_id, f"a new account (#{account_id} in the dry run)")

    transfers = [
        {**t, "debit": label(t["debit_account"]), "credit": label(t["credit_account"])}
        for t in body.get("transfers", [])
    ]
    return {
        "preview": body,
        "preview_failed": response.status >= 500,
        "preview_transfers": transfers,
    }
