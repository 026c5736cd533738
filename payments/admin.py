"""Staff view of the webhook receipt log and its repairs: reprocess, attach, credit."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from escrow.admin_queues import (
    claimed_escrow_ref,
    failed_deliveries,
    flagged_payments,
    parked_deliveries,
    unlinked_problem_refs,
    with_body_head,
)
from escrow.models import Escrow
from escrowsite.admin import (
    Done,
    ExactSearchMixin,
    ObjectAction,
    ObjectActionsMixin,
    ReadOnlyAdmin,
    ReasonForm,
    as_int,
    perm,
)
from escrowsite.errors import ApplicationError
from payments import services, staff
from payments.models import RETRYABLE_OUTCOMES, Outcome, PaymentEvent, WebhookReceipt
from payments.parsing import PROVIDER
from wallets.models import Account, Transaction, TransactionType

# A bulk reprocess previews every selected delivery; more than this is a job for
# `payments_retry`, not a page.
BULK_REPROCESS_MAX = 20
# A bulk acknowledgement lists what it clears; one changelist page at most.
BULK_ACKNOWLEDGE_MAX = 100
# Flagged outcomes a person can look at and close (payments.staff.acknowledge_receipt).
ACKNOWLEDGEABLE = (Outcome.APPLIED, Outcome.CONFLICT, Outcome.DUPLICATE)


def _url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


def delivery_done(response: services.DeliveryResponse) -> Done:
    """Turn a processing response into the message staff see, and where they go next."""
    body = response.body
    receipt_id = body.get("receipt")
    receipt_url = _url("payments_webhookreceipt_change", receipt_id)
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
        _url("escrow_escrow_change", escrow_pk) if escrow_pk else receipt_url,
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


def _run_attach(request: HttpRequest, receipt: WebhookReceipt, data: dict[str, Any]) -> Done:
    outcome = staff.attach_suspense_payment(
        receipt_id=receipt.pk,
        escrow_id=data["escrow_id"],
        actor_id=request.user.pk,
        reason=data["reason"],
    )
    return Done(
        f"Payment of delivery #{receipt.pk} attached to {data['escrow_id']}: {outcome.kind}.",
        redirect_to=_url("escrow_escrow_change", outcome.escrow.pk),
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


class QueueFilter(admin.SimpleListFilter):
    title = "work queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("failed", "Failed or stuck"),
            ("parked", "Parked (unknown escrow, conflict)"),
            ("late", "Late/extra or short payments"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        queues = {
            "failed": failed_deliveries,
            "parked": parked_deliveries,
            "late": flagged_payments,
        }
        if self.value() in queues:
            return queryset & queues[self.value()]()
        return queryset


class ReceiptChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet:
        # Never load raw bodies (up to 256 KB each) for a list; the first KBs name the escrow.
        return with_body_head(super().get_queryset(request, exclude_parameters))


def _pre(text: str) -> str:
    return format_html('<pre class="backoffice-pre">{}</pre>', text) if text else "-"


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(ObjectActionsMixin, ExactSearchMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "received_at",
        "event",
        "escrow_column",
        "tx_id",
        "outcome",
        "flagged",
        "signature_valid",
        "attempts",
        "response_status",
    )
    list_filter = (QueueFilter, "outcome", "flagged", "signature_valid", "received_at")
    list_select_related = ("escrow",)
    search_fields = ("tx_id", "escrow_ref", "provider_payment_id")
    search_help_text = "Exact: provider tx id, escrow id, provider payment id, or #receipt id."
    ordering = ("-received_at", "-pk")
    actions = ("reprocess_selected", "acknowledge_selected")
    readonly_fields = ("raw_body", "headers_pretty", "traceback_pre", "dedupe_owner_link")
    fieldsets = (
        (
            "Outcome",
            {
                "fields": (
                    "outcome",
                    "detail",
                    "flagged",
                    "attempts",
                    "processed_at",
                    "response_status",
                    "last_error",
                    "traceback_pre",
                )
            },
        ),
        (
            "Event",
            {
                "fields": (
                    "event",
                    "tx_id",
                    "provider_payment_id",
                    "escrow_ref",
                    "escrow",
                    "payload_hash",
                    "dedupe_owner_link",
                )
            },
        ),
        (
            "Delivery",
            {
                "fields": (
                    "provider",
                    "received_at",
                    "remote_ip",
                    "signature_valid",
                    "body_size",
                    "body_sha256",
                    "body_pruned_at",
                    "headers_pretty",
                )
            },
        ),
        ("Raw body", {"fields": ("raw_body",)}),
    )
    object_actions = (
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

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return ReceiptChangeList

    def search_q(self, term: str) -> Q:
        ref = term.upper()
        # A failed delivery's link fields were rolled back with it: also match the escrow
        # its raw body names.
        named = unlinked_problem_refs().get(ref, [])
        q = Q(tx_id=term) | Q(escrow_ref=ref) | Q(provider_payment_id=term) | Q(pk__in=named)
        if (pk := as_int(term)) is not None:
            q |= Q(pk=pk)
        return q

    @admin.display(description="escrow")
    def escrow_column(self, receipt: WebhookReceipt) -> str:
        if receipt.escrow_id:
            return format_html(
                '<a href="{}">{}</a>',
                _url("escrow_escrow_change", receipt.escrow_id),
                receipt.escrow.escrow_id,
            )
        ref = receipt.escrow_ref or claimed_escrow_ref(
            bytes(getattr(receipt, "body_head", b"") or b"")
        )
        return (
            format_html("<span title='named in the body, not linked'>{} ?</span>", ref)
            if ref
            else "-"
        )

    @admin.display(description="raw body (as received)")
    def raw_body(self, receipt: WebhookReceipt) -> str:
        raw = bytes(receipt.body or b"")
        try:
            text = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
        except ValueError:
            # Shown as received: a malformed body is exactly what staff need to see.
            text = raw.decode("utf-8", "replace")
        return _pre(text)

    @admin.display(description="headers")
    def headers_pretty(self, receipt: WebhookReceipt) -> str:
        return _pre(json.dumps(receipt.headers, indent=2, ensure_ascii=False))

    @admin.display(description="traceback")
    def traceback_pre(self, receipt: WebhookReceipt) -> str:
        return _pre(receipt.traceback)

    @admin.display(description="first delivery of this event")
    def dedupe_owner_link(self, receipt: WebhookReceipt) -> str:
        if not receipt.tx_id:
            return "-"
        owner = staff.dedupe_owner(receipt)
        if owner is None:
            return "-"
        return format_html(
            '<a href="{}">#{}</a> ({})',
            _url("payments_webhookreceipt_change", owner.pk),
            owner.pk,
            owner.outcome,
        )

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm("reprocess_receipt"))

    @admin.action(
        description="Reprocess selected deliveries (preview first)", permissions=["reprocess"]
    )
    def reprocess_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        receipts = list(
            queryset.filter(signature_valid=True, outcome__in=RETRYABLE_OUTCOMES)
            .defer("body", "traceback", "headers")
            .order_by("pk")[: BULK_REPROCESS_MAX + 1]
        )
        if not receipts:
            self.message_user(
                request,
                "None of the selected deliveries can be reprocessed: only signed deliveries "
                "that failed or got stuck can.",
                messages.WARNING,
            )
            return None
        if len(receipts) > BULK_REPROCESS_MAX:
            self.message_user(
                request,
                f"Select at most {BULK_REPROCESS_MAX} deliveries; use `payments_retry` for more.",
                messages.ERROR,
            )
            return None
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            for receipt in receipts:
                try:
                    response = staff.reprocess_receipt(
                        receipt_id=receipt.pk,
                        actor_id=request.user.pk,
                        reason=form.cleaned_data["reason"],
                    )
                except ApplicationError as exc:
                    self.message_user(
                        request, f"Delivery #{receipt.pk}: {exc.message}", messages.ERROR
                    )
                    continue
                done = delivery_done(response)
                self.message_user(request, done.message, done.level)
            return None
        return TemplateResponse(
            request,
            "admin/payments/webhookreceipt/reprocess_selected.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reprocess deliveries: preview",
                "opts": self.opts,
                "form": form,
                "items": [(r, reprocess_preview(request, r)) for r in receipts],
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            },
        )

    def has_acknowledge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm("acknowledge_receipt"))

    @admin.action(
        description="Acknowledge selected flagged deliveries (asks for a reason)",
        permissions=["acknowledge"],
    )
    def acknowledge_selected(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        receipts = list(
            queryset.filter(flagged=True)
            .select_related("escrow")
            .defer("body", "traceback", "headers")
            .order_by("pk")[: BULK_ACKNOWLEDGE_MAX + 1]
        )
        if not receipts:
            self.message_user(
                request, "None of the selected deliveries is flagged.", messages.WARNING
            )
            return None
        if len(receipts) > BULK_ACKNOWLEDGE_MAX:
            self.message_user(
                request, f"Select at most {BULK_ACKNOWLEDGE_MAX} deliveries.", messages.ERROR
            )
            return None
        form = ReasonForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            done = 0
            for receipt in receipts:
                # One durable transaction each: a refused one (parked money) stops no other.
                try:
                    staff.acknowledge_receipt(
                        receipt_id=receipt.pk,
                        actor_id=request.user.pk,
                        reason=form.cleaned_data["reason"],
                    )
                except ApplicationError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
                else:
                    done += 1
            if done:
                self.message_user(
                    request, f"{done} flagged deliveries acknowledged.", messages.SUCCESS
                )
            return None
        return TemplateResponse(
            request,
            "admin/payments/webhookreceipt/acknowledge_selected.html",
            {
                **self.admin_site.each_context(request),
                "title": "Acknowledge flagged deliveries",
                "opts": self.opts,
                "form": form,
                "receipts": receipts,
                "acknowledgeable": ACKNOWLEDGEABLE,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            },
        )


@admin.register(PaymentEvent)
class PaymentEventAdmin(ExactSearchMixin, ReadOnlyAdmin):
    """The dedupe table: which delivery first claimed each provider event."""

    list_display = ("id", "provider", "tx_id", "event", "receipt_link", "created_at")
    search_fields = ("tx_id",)
    search_help_text = "Exact provider transaction id."
    ordering = ("-pk",)

    def search_q(self, term: str) -> Q:
        # The provider leads the dedupe key's index; without it the index cannot serve.
        return Q(provider=PROVIDER, tx_id=term)

    @admin.display(description="receipt")
    def receipt_link(self, event: PaymentEvent) -> str:
        # receipt_id only: joining the receipt would load its raw body for every row.
        return format_html(
            '<a href="{}">#{}</a>',
            _url("payments_webhookreceipt_change", event.receipt_id),
            event.receipt_id,
        )
