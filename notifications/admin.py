"""Staff view of the outbox: what was sent, what failed and why, and a retry button."""

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from escrow.admin_queues import failing_notifications
from escrowsite.admin import ExactSearchMixin, ReadOnlyAdmin, escrow_pks, perm
from notifications import services
from notifications.models import Notification


class QueueFilter(admin.SimpleListFilter):
    title = "work queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failing", "Failing (failed or given up)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "failing":
            return queryset & failing_notifications()
        return queryset


@admin.register(Notification)
class NotificationAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = [
        "key",
        "event",
        "channel",
        "customer_id",
        "escrow",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "sent_at",
        "created_at",
    ]
    list_filter = [QueueFilter, "status", "channel", "created_at"]
    list_select_related = ["escrow"]
    search_fields = ["key", "escrow__escrow_id"]
    search_help_text = "Exact: notification key, escrow id, or customer (Telegram) id."
    ordering = ["-created_at", "-pk"]
    readonly_fields = ["payload_pretty"]
    exclude = ["payload"]
    actions = ["retry_now"]

    def search_q(self, term: str) -> Q:
        q = Q(key=term) | Q(escrow_id__in=escrow_pks(term))
        if term.isdigit() and len(term) < 19:
            q |= Q(customer_id=int(term))
        return q

    @admin.display(description="payload")
    def payload_pretty(self, notification: Notification) -> str:
        return format_html(
            '<pre class="backoffice-pre">{}</pre>',
            json.dumps(notification.payload, indent=2, ensure_ascii=False),
        )

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(perm("retry_notification"))

    # Not a money action: sending again never touches payment state, and sent rows are
    # left alone by the service, so it needs no reason page.
    @admin.action(description="Retry selected failed/dead notifications", permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        count = services.requeue_notifications(ids=list(queryset.values_list("pk", flat=True)))
        self.message_user(
            request, f"{count} notification(s) queued for another try.", messages.SUCCESS
        )
