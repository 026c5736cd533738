"""The escrow admin: the list with its work-queue filters, exact search, and the timeline page."""

from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse

from escrow.admin.actions import ESCROW_ACTIONS
from escrow.admin_queues import deadline_passed_q, escrows_with_delivery_problems_q
from escrow.admin_timeline import CAP, escrow_timeline
from escrow.models import Escrow
from escrowsite.admin import ExactSearchMixin, ObjectActionsMixin, ReadOnlyAdmin, as_int
from payments.parsing import PROVIDER
from wallets.models import Transaction


def _url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


# --- filters ---------------------------------------------------------------------------


class ProviderFilter(admin.SimpleListFilter):
    """Known providers, without a DISTINCT over the whole escrow table."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(PROVIDER, PROVIDER), ("-", "none yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "-":
            return queryset.filter(provider="")
        if self.value():
            return queryset.filter(provider=self.value())
        return queryset


class DeliveryProblemFilter(admin.SimpleListFilter):
    title = "webhook deliveries"
    parameter_name = "deliveries"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("problem", "Has failed or parked deliveries")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "problem":
            return queryset.filter(escrows_with_delivery_problems_q())
        return queryset


class DeadlineFilter(admin.SimpleListFilter):
    title = "deadline"
    parameter_name = "deadline"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("past", "Past a running deadline")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "past":
            return queryset.filter(deadline_passed_q())
        return queryset


# --- the admin -------------------------------------------------------------------------


@admin.register(Escrow)
class EscrowAdmin(ObjectActionsMixin, ExactSearchMixin, ReadOnlyAdmin):
    list_display = (
        "escrow_id",
        "status",
        "amount",
        "total_due",
        "buyer",
        "seller",
        "provider",
        "created_at",
        "payment_confirmed_at",
    )
    list_filter = (
        "status",
        ProviderFilter,
        "created_at",
        "payment_confirmed_at",
        DeliveryProblemFilter,
        DeadlineFilter,
    )
    list_select_related = ("buyer", "seller")
    search_fields = ("escrow_id", "deposit_tx_hash", "provider_payment_id")
    search_help_text = "Exact: escrow id, tx hash, provider payment id, or customer (Telegram) id."
    ordering = ("-created_at", "-pk")
    fieldsets = (
        (None, {"fields": ("escrow_id", "status", "description", ("buyer", "seller"))}),
        (
            "Money",
            {
                "fields": (
                    ("amount", "currency"),
                    ("fee_split", "fee_amount"),
                    ("buyer_fee", "seller_fee"),
                    "total_due",
                    "accepted_shortfall",
                )
            },
        ),
        (
            "Deadlines",
            {
                "fields": (
                    "created_at",
                    "expires_at",
                    "payment_confirmed_at",
                    "seller_accepted_at",
                    "delivery_hours",
                    "delivery_deadline",
                    "delivered_at",
                    "auto_release_at",
                    "completed_at",
                    "status_changed_at",
                )
            },
        ),
        (
            "Payment",
            {
                "fields": (
                    "provider",
                    "provider_payment_id",
                    "deposit_address",
                    "deposit_tx_hash",
                )
            },
        ),
        ("Notes", {"fields": ("admin_notes",)}),
    )
    object_actions = ESCROW_ACTIONS
    sections_template = "admin/escrow/escrow/timeline.html"

    def search_q(self, term: str) -> Q:
        # The escrows of matching transaction records are looked up first: a subquery in
        # one branch of the OR would make PostgreSQL scan every escrow (see escrow_pks).
        paid_by = list(
            Transaction.objects.filter(external_tx_id=term, escrow__isnull=False)
            .values_list("escrow_id", flat=True)
            .distinct()[:100]
        )
        q = (
            Q(escrow_id=term.upper())
            | Q(deposit_tx_hash=term)
            | Q(provider_payment_id=term)
            | Q(pk__in=paid_by)
        )
        if (customer := as_int(term)) is not None:
            q |= Q(buyer_id=customer) | Q(seller_id=customer)
        return q

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        queryset = self.get_queryset(request).select_related("buyer", "seller", "holding__account")
        pk = as_int(object_id)
        return queryset.filter(pk=pk).first() if pk is not None else None

    def section_context(self, request: HttpRequest, escrow: Escrow) -> dict[str, Any]:
        pk = escrow.pk
        changelists = {
            "status_changes": "escrow_statuschange",
            "receipts": "payments_webhookreceipt",
            "transactions": "wallets_transaction",
            "transfers": "wallets_transfer",
            "notifications": "notifications_notification",
            "staff_actions": "escrow_staffaction",
        }
        see_all = {
            section: f"{_url(f'{name}_changelist')}?escrow__id__exact={pk}"
            for section, name in changelists.items()
        }
        return {"timeline": escrow_timeline(escrow), "see_all": see_all, "cap": CAP}
