"""Read-only lists of what hangs off an escrow: holdings, status history, the staff audit log."""

import json

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from escrow.models import EscrowHolding, StaffAction, StatusChange
from escrowsite.admin import ExactSearchMixin, ReadOnlyAdmin, escrow_pks


@admin.register(EscrowHolding)
class EscrowHoldingAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = ("escrow", "status", "held", "created_at", "resolved_at")
    list_filter = ("status",)
    list_select_related = ("escrow", "account")
    search_fields = ("escrow__escrow_id",)
    search_help_text = "Exact escrow id."
    ordering = ("-pk",)

    def search_q(self, term: str) -> Q:
        return Q(escrow__escrow_id=term.upper())

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("escrow", "account")

    @admin.display(description="held")
    def held(self, holding: EscrowHolding) -> str:
        return f"{holding.account.balance} {holding.account.currency}"


@admin.register(StatusChange)
class StatusChangeAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = ("at", "escrow", "from_status", "to_status", "actor", "source", "reason")
    list_filter = ("to_status", "at")
    list_select_related = ("escrow", "actor")
    search_fields = ("escrow__escrow_id",)
    search_help_text = "Exact escrow id."
    ordering = ("-at", "-pk")

    def search_q(self, term: str) -> Q:
        return Q(escrow__escrow_id=term.upper())


@admin.register(StaffAction)
class StaffActionAdmin(ExactSearchMixin, ReadOnlyAdmin):
    """The staff audit log: append-only (a database trigger refuses edits and deletes)."""

    list_display = ("at", "actor", "action", "escrow", "target", "reason")
    list_filter = ("action", "at")
    list_select_related = ("actor", "escrow")
    search_fields = ("escrow__escrow_id", "target", "actor__username")
    search_help_text = "Exact: escrow id, target (e.g. 'customer 5590563715'), or staff username."
    ordering = ("-at", "-pk")
    readonly_fields = ("changes_pretty",)
    fields = ("at", "actor", "action", "reason", "escrow", "target", "changes_pretty")

    def search_q(self, term: str) -> Q:
        staff = get_user_model().objects.filter(username=term).values_list("pk", flat=True)
        return Q(escrow_id__in=escrow_pks(term)) | Q(target=term) | Q(actor_id__in=list(staff))

    @admin.display(description="changes")
    def changes_pretty(self, action: StaffAction) -> str:
        return format_html(
            '<pre class="backoffice-pre">{}</pre>',
            json.dumps(action.changes, indent=2, ensure_ascii=False, default=str),
        )
