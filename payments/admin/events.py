"""The provider-event dedupe table's admin: a read-only index into the receipt log."""

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html

from escrowsite.admin import ExactSearchMixin, ReadOnlyAdmin
from payments.admin.common import admin_url
from payments.models import PaymentEvent
from payments.parsing import PROVIDER


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
            admin_url("payments_webhookreceipt_change", event.receipt_id),
            event.receipt_id,
        )
