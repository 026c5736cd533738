"""The receipt changelist's bulk repairs: preview the selection, ask one reason, act on each."""

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from escrowsite.admin import ReasonForm, perm
from escrowsite.errors import ApplicationError
from payments import staff
from payments.admin.common import ACKNOWLEDGEABLE, delivery_done, reprocess_preview
from payments.models import RETRYABLE_OUTCOMES

# A bulk reprocess previews every selected delivery; more than this is a job for
# `payments_retry`, not a page.
BULK_REPROCESS_MAX = 20
# A bulk acknowledgement lists what it clears; one changelist page at most.
BULK_ACKNOWLEDGE_MAX = 100


class ReceiptBulkActions(admin.ModelAdmin):
    """The receipt admin's changelist actions, each gated by its own permission.

    A base class rather than a mixin so the ModelAdmin API it calls is typed; it adds
    methods only, and `WebhookReceiptAdmin.actions` names which of them are offered.
    """

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
