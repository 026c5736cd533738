"""The repairs on one receipt (reprocess, attach, credit, acknowledge): forms, facts, calls."""

from typing import Any

from django import forms
from django.http import HttpRequest

from escrowsite.admin import Done, ObjectAction, ReasonForm, perm
from payments import staff
from payments.admin.common import ACKNOWLEDGEABLE, admin_url, delivery_done, reprocess_preview
from payments.models import RETRYABLE_OUTCOMES, Outcome, WebhookReceipt
from wallets.models import Transaction, TransactionType


class AttachForm(ReasonForm):
    escrow_id = forms.CharField(max_length=16, help_text="The escrow this payment was meant for.")

    field_order = ["escrow_id", "reason"]

    def clean_escrow_id(self) -> str:
        return self.cleaned_data["escrow_id"].strip().upper()


class CreditForm(ReasonForm):
    customer_id = forms.IntegerField(
        min_value=1, help_text="Telegram id of the customer to credit."
    )

    field_order = ["customer_id", "reason"]


def _run_reprocess(request: HttpRequest, receipt: WebhookReceipt, data: dict[str, Any]) -> Done:
    return delivery_done(
        staff.reprocess_receipt(
            receipt_id=receipt.pk, actor_id=request.user.pk, reason=data["reason"]
        )
    )


def _is_parked(receipt: WebhookReceipt) -> bool:
    return receipt.outcome == Outcome.PARKED and receipt.flagged


def _parked_facts(request: HttpRequest, receipt: WebhookReceipt) -> dict[str, Any]:
    record = Transaction.objects.filter(
        provider=receipt.provider, external_tx_id=receipt.tx_id, type=TransactionType.SUSPENSE
    ).first()
    return {
        "facts": [
            ("Amount in suspense", f"{record.amount} {record.currency}" if record else "none"),
            ("Escrow reference in the payment", receipt.escrow_ref or "(none)"),
            ("Provider transaction", receipt.tx_id),
            ("Detail", receipt.detail),
        ]
    }


def _run_attach(request: HttpRequest, receipt: WebhookReceipt, data: dict[str, Any]) -> Done:
    outcome = staff.attach_suspense_payment(
        receipt_id=receipt.pk,
        escrow_id=data["escrow_id"],
        actor_id=request.user.pk,
        reason=data["reason"],
    )
    return Done(
        f"Payment of delivery #{receipt.pk} attached to {data['escrow_id']}: {outcome.kind}.",
        redirect_to=admin_url("escrow_escrow_change", outcome.escrow.pk),
    )


def _run_credit(request: HttpRequest, receipt: WebhookReceipt, data: dict[str, Any]) -> Done:
    record = staff.refund_suspense_payment(
        receipt_id=receipt.pk,
        customer_id=data["customer_id"],
        actor_id=request.user.pk,
        reason=data["reason"],
    )
    return Done(
        f"{record.amount} {record.currency} of delivery #{receipt.pk} credited to customer "
        f"{data['customer_id']}'s wallet ({record.transaction_id})."
    )


def _can_acknowledge(receipt: WebhookReceipt) -> bool:
    return receipt.flagged and receipt.outcome in ACKNOWLEDGEABLE


def _flag_facts(request: HttpRequest, receipt: WebhookReceipt) -> dict[str, Any]:
    return {
        "facts": [
            ("Outcome", receipt.get_outcome_display()),
            ("Flagged", "yes" if receipt.flagged else "no"),
            ("Escrow", receipt.escrow.escrow_id if receipt.escrow_id else receipt.escrow_ref),
            ("Provider transaction", receipt.tx_id or "-"),
            ("Detail", receipt.detail or "-"),
        ]
    }


def _run_acknowledge(request: HttpRequest, receipt: WebhookReceipt, data: dict[str, Any]) -> Done:
    staff.acknowledge_receipt(
        receipt_id=receipt.pk, actor_id=request.user.pk, reason=data["reason"]
    )
    return Done(f"Delivery #{receipt.pk} acknowledged: it left the work queue.")


RECEIPT_ACTIONS = (
    ObjectAction(
        name="reprocess",
        label="Reprocess (preview first)",
        permission=perm("reprocess_receipt"),
        run=_run_reprocess,
        applies=lambda r: r.signature_valid and r.outcome in RETRYABLE_OUTCOMES,
        preview=reprocess_preview,
        preview_template="admin/payments/webhookreceipt/reprocess_preview.html",
        help="A dry run of processing this delivery now is shown below; nothing has "
        "changed yet. Confirm to process it for real, audited under your name.",
        confirm_label="Reprocess for real",
    ),
    ObjectAction(
        name="attach",
        label="Attach to an escrow",
        permission=perm("resolve_suspense_payment"),
        run=_run_attach,
        form_class=AttachForm,
        applies=_is_parked,
        preview=_parked_facts,
        help="Apply this parked payment to the escrow it was meant for. The escrow's "
        "payment rules decide as for any payment (confirm, partial, or a late credit).",
        confirm_label="Attach payment",
    ),
    ObjectAction(
        name="credit",
        label="Credit to a customer's wallet",
        permission=perm("resolve_suspense_payment"),
        run=_run_credit,
        form_class=CreditForm,
        applies=_is_parked,
        preview=_parked_facts,
        help="Move this parked payment out of suspense into a customer's wallet.",
        confirm_label="Credit wallet",
    ),
    ObjectAction(
        name="acknowledge",
        label="Acknowledge (clear the flag)",
        permission=perm("acknowledge_receipt"),
        run=_run_acknowledge,
        applies=_can_acknowledge,
        preview=_flag_facts,
        help="You looked at this flagged delivery (a late or extra payment credited to "
        "the buyer's wallet, an underpayment accepted, a conflicting redelivery) and "
        "nothing more is needed: it leaves the work queue. No money moves. A parked "
        "payment cannot be acknowledged: attach it or credit it instead.",
        confirm_label="Acknowledge",
    ),
)
