"""The receipt log's admin: work-queue filters, exact search, and every delivery as received."""

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from escrow.admin_queues import (
    claimed_escrow_ref,
    failed_deliveries,
    flagged_payments,
    parked_deliveries,
    unlinked_problem_refs,
    with_body_head,
)
from escrowsite.admin import ExactSearchMixin, ObjectActionsMixin, ReadOnlyAdmin, as_int
from payments import staff
from payments.admin.actions import RECEIPT_ACTIONS
from payments.admin.bulk import ReceiptBulkActions
from payments.admin.common import admin_url
from payments.models import WebhookReceipt


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
class WebhookReceiptAdmin(ObjectActionsMixin, ExactSearchMixin, ReceiptBulkActions, ReadOnlyAdmin):
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
    object_actions = RECEIPT_ACTIONS

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
                admin_url("escrow_escrow_change", receipt.escrow_id),
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
            admin_url("payments_webhookreceipt_change", owner.pk),
            owner.pk,
            owner.outcome,
        )
