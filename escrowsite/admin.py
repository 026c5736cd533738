"""The staff back-office: the admin site with its work queues, and the staff-action pages.

A staff action is a page of its own (`<object>/actions/<name>/`): it shows what the
action would do (a preview, where the service offers one), asks for a reason and the
action's inputs, and on confirmation calls one service. A domain error is shown as an
error message on the same page; the service's durable transaction guarantees nothing
was half-done. Each action is gated by a permission on the Escrow content type
(`escrow.<codename>`, created with the Support and Finance groups by a migration).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.functional import cached_property

from escrow.admin_queues import queue_counts
from escrow.models import Escrow, StaffAction
from escrowsite.errors import ApplicationError

# Custom permissions (codename, name), all on the Escrow content type. Support has none
# of them except retrying notifications, which neither moves money nor changes a status.
ACTION_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("reprocess_receipt", "Can reprocess a webhook delivery"),
    ("confirm_payment_by_hand", "Can confirm a payment by hand from provider evidence"),
    ("resolve_suspense_payment", "Can attach or credit a payment parked in suspense"),
    ("extend_deadline", "Can extend an escrow deadline"),
    ("cancel_escrow", "Can cancel an escrow"),
    ("refund_escrow", "Can refund an escrow"),
    ("release_escrow", "Can release an escrow"),
    ("resolve_dispute", "Can resolve a dispute"),
    ("adjust_wallet", "Can adjust a customer wallet"),
    ("approve_adjustment", "Can approve or reject a wallet adjustment request"),
    ("retry_notification", "Can retry failed notifications"),
    # Granted to Finance by escrow migration 0006 (0005's list is frozen).
    ("acknowledge_receipt", "Can acknowledge a flagged webhook delivery"),
)
SUPPORT_ACTION_PERMISSIONS = ("retry_notification",)


def perm(codename: str) -> str:
    return f"escrow.{codename}"


# --- the site --------------------------------------------------------------------------

# Where each work queue's count links to: (changelist url name, query string).
QUEUE_LINKS: dict[str, tuple[str, str]] = {
    "failed": ("admin:payments_webhookreceipt_changelist", "queue=failed"),
    "parked": ("admin:payments_webhookreceipt_changelist", "queue=parked"),
    "late": ("admin:payments_webhookreceipt_changelist", "queue=late"),
    "suspense": ("admin:wallets_account_changelist", "kind__exact=suspense"),
    "deadline": ("admin:escrow_escrow_changelist", "deadline=past"),
    "notifications": ("admin:notifications_notification_changelist", "queue=failing"),
    "adjustments": ("admin:wallets_adjustmentrequest_changelist", "status__exact=pending"),
}


class BackOfficeSite(admin.AdminSite):
    """The default admin site, with the work queues on its index page."""

    site_header = "Escrow back-office"
    site_title = "Escrow back-office"
    index_title = "Work queues and records"

    def index(self, request: HttpRequest, extra_context: dict | None = None) -> HttpResponse:
        queues = []
        for queue in queue_counts():
            name, query = QUEUE_LINKS[queue.key]
            queues.append(
                {"queue": queue, "url": f"{reverse(name, current_app=self.name)}?{query}"}
            )
        context: dict[str, Any] = {"work_queues": queues}
        if request.user.has_perm("escrow.view_staffaction"):
            # The audit log, in place of Django's "Recent actions": staff actions here are
            # services, not admin form saves, so Django's own log would stay empty.
            context["recent_staff_actions"] = list(
                StaffAction.objects.select_related("actor", "escrow").order_by("-at", "-pk")[:10]
            )
        return super().index(request, {**context, **(extra_context or {})})


# --- staff actions ---------------------------------------------------------------------


class ReasonForm(forms.Form):
    """Every staff action asks why; the reason goes into the audit log."""

    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 70}),
        help_text="Why you are doing this. Kept in the staff audit log.",
    )

    def __init__(self, *args: Any, obj: Model | None = None, **kwargs: Any) -> None:
        self.obj = obj
        super().__init__(*args, **kwargs)

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason


@dataclass(frozen=True)
class Done:
    """What a staff action reports back: a message, its level, and where to go next."""

    message: str
    level: int = messages.SUCCESS
    redirect_to: str | None = None


def _always(obj: Any) -> bool:
    return True


@dataclass(frozen=True)
class ObjectAction:
    """One staff action on one object: its page, permission, form and service call.

    `run(request, obj, cleaned_data)` calls the service and returns a Done; a domain
    error it raises is shown on the page. `preview(request, obj)` adds context for the
    page (rendered by `preview_template`) before anything is confirmed. `applies` only
    decides whether the button is shown; the service is the authority on what is allowed.
    """

    name: str
    label: str
    permission: str
    run: Callable[[HttpRequest, Any, dict[str, Any]], Done]
    form_class: type[ReasonForm] = ReasonForm
    applies: Callable[[Any], bool] = _always
    preview: Callable[[HttpRequest, Any], dict[str, Any]] | None = None
    preview_template: str = ""
    help: str = ""
    confirm_label: str = "Confirm"


class ObjectActionsMixin:
    """ModelAdmin mixin: staff-action pages and their buttons on the change page."""

    object_actions: tuple[ObjectAction, ...] = ()
    change_form_template = "admin/backoffice/change_form.html"
    # A template included below the fields on the change page (timeline, ledger, ...).
    sections_template = ""

    def get_urls(self) -> list:
        opts = self.model._meta  # type: ignore[attr-defined]
        urls = [
            path(
                "<path:object_id>/actions/<slug:action_name>/",
                self.admin_site.admin_view(self.object_action_view),  # type: ignore[attr-defined]
                name=f"{opts.app_label}_{opts.model_name}_action",
            )
        ]
        return urls + super().get_urls()  # type: ignore[misc]

    def action_url(self, obj: Model, name: str) -> str:
        opts = self.model._meta  # type: ignore[attr-defined]
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_action",
            args=[obj.pk, name],
            current_app=self.admin_site.name,  # type: ignore[attr-defined]
        )

    def change_url(self, obj: Model) -> str:
        opts = obj._meta
        return reverse(
            f"admin:{opts.app_label}_{opts.model_name}_change",
            args=[obj.pk],
            current_app=self.admin_site.name,  # type: ignore[attr-defined]
        )

    def available_actions(self, request: HttpRequest, obj: Model) -> list[dict[str, str]]:
        return [
            {"name": a.name, "label": a.label, "url": self.action_url(obj, a.name)}
            for a in self.object_actions
            if request.user.has_perm(a.permission) and a.applies(obj)
        ]

    def section_context(self, request: HttpRequest, obj: Model) -> dict[str, Any]:
        """Extra context for `sections_template`."""
        return {}

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["object_actions"] = self.available_actions(request, obj)
            if self.sections_template:
                context["sections_template"] = self.sections_template
                context.update(self.section_context(request, obj))
        return super().render_change_form(  # type: ignore[misc]
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )

    def object_action_view(
        self, request: HttpRequest, object_id: str, action_name: str
    ) -> HttpResponse:
        action = next((a for a in self.object_actions if a.name == action_name), None)
        if action is None:
            raise Http404(f"No staff action {action_name!r}.")
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            raise Http404("No such object.")
        if not (
            self.has_view_permission(request, obj)  # type: ignore[attr-defined]
            and request.user.has_perm(action.permission)
        ):
            raise PermissionDenied
        if request.method == "POST":
            form = action.form_class(request.POST, obj=obj)
            if form.is_valid():
                try:
                    done = action.run(request, obj, form.cleaned_data)
                except ApplicationError as exc:
                    # The service's transaction rolled back: nothing was done.
                    messages.error(request, exc.message)
                else:
                    messages.add_message(request, done.level, done.message)
                    return HttpResponseRedirect(done.redirect_to or self.change_url(obj))
        else:
            form = action.form_class(obj=obj)
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": f"{action.label}: {obj}",
            "subtitle": None,
            "opts": opts,
            "app_label": opts.app_label,
            "original": obj,
            "object": obj,
            "action": action,
            "form": form,
            "change_url": self.change_url(obj),
            "preview_template": action.preview_template,
            "media": self.media + form.media,  # type: ignore[attr-defined]
        }
        if action.preview is not None:
            context.update(action.preview(request, obj))
        return TemplateResponse(request, "admin/backoffice/object_action.html", context)


class EstimatedCountPaginator(Paginator):
    """Pages of a changelist without counting every row of a big table or a big filter.

    An unfiltered list of a table PostgreSQL estimates above ESTIMATE_ABOVE rows shows
    the planner's estimate (pg_class.reltuples, kept by autovacuum) as its size. A
    filtered list is counted exactly up to EXACT_UP_TO rows (COUNT over a LIMIT, served
    by the filter's index); beyond that, a filter matching most of a million-row table
    would cost a scan of it on every page, so the planner's estimate for the filtered
    query is shown instead. A small table is always counted exactly.
    """

    ESTIMATE_ABOVE = 50_000
    EXACT_UP_TO = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        query = getattr(queryset, "query", None)
        if query is None or connection.vendor != "postgresql":
            return super().count
        if not query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [queryset.model._meta.db_table],
                )
                row = cursor.fetchone()
            if row and row[0] > self.ESTIMATE_ABOVE:
                return int(row[0])
            return super().count
        exact = queryset.order_by()[: self.EXACT_UP_TO + 1].count()
        if exact <= self.EXACT_UP_TO:
            return exact
        plan = json.loads(queryset.order_by().explain(format="json"))
        return max(int(plan[0]["Plan"]["Plan Rows"]), self.EXACT_UP_TO + 1)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records staff read but never write through forms: no add, change or delete.

    Money fields and ledger rows change only through services; the admin shows them.
    """

    show_full_result_count = False  # no second, unfiltered COUNT(*) on big tables
    paginator = EstimatedCountPaginator

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ExactSearchMixin:
    """Search by exact identifiers (ids, hashes, customer ids) that an index can serve.

    The admin's default `icontains` search scans the whole table; on the ledger and the
    receipt log that is too slow, and staff search by identifiers they copy anyway.
    """

    search_help_text = ""

    def search_q(self, term: str) -> Any:  # a Q; subclasses define it
        raise NotImplementedError

    def get_search_results(self, request: HttpRequest, queryset: Any, search_term: str) -> Any:
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(self.search_q(term)), False


def escrow_pks(term: str) -> list[int]:
    """The primary key of the escrow whose public id is `term`, as a list ([] or [pk]).

    A search ORs exact matches; PostgreSQL combines them from their indexes (BitmapOr)
    only when every branch tests a column of the searched table. A branch through a join
    (`escrow__escrow_id`) or a subquery turns the whole search into a scan of a
    million-row table, so the escrow is looked up first: one indexed query.
    """
    return list(
        Escrow.objects.filter(escrow_id=term.strip().upper()).values_list("pk", flat=True)[:1]
    )


def as_int(term: str) -> int | None:
    """`term` as an integer id (Telegram ids, primary keys), or None."""
    term = term.lstrip("#")
    return int(term) if term.isdigit() and len(term) < 19 else None
