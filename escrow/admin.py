"""Staff view of escrows: the list, the timeline page, and the audited repairs."""

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from escrow import staff as escrow_staff
from escrow.admin_queues import deadline_passed_q, escrows_with_delivery_problems_q
from escrow.admin_timeline import CAP, escrow_timeline
from escrow.models import Escrow, EscrowHolding, EscrowStatus, StaffAction, StatusChange
from escrow.transitions import can_transition
from escrowsite.admin import (
    Done,
    ExactSearchMixin,
    ObjectAction,
    ObjectActionsMixin,
    ReadOnlyAdmin,
    ReasonForm,
    as_int,
    escrow_pks,
    perm,
)
from payments import staff as payments_staff
from payments.admin import delivery_done
from payments.parsing import PROVIDER
from wallets.models import Transaction
from wallets.money import quantize_usd

S = EscrowStatus
MONEY = {"max_digits": 20, "decimal_places": 2}


def _url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


# --- forms -----------------------------------------------------------------------------


class ConfirmByHandForm(ReasonForm):
    """The provider's evidence of a payment, read off its dashboard or the blockchain."""

    tx_hash = forms.CharField(max_length=200, label="Provider transaction id / tx hash")
    usd_amount = forms.DecimalField(min_value=Decimal("0.01"), label="USD amount", **MONEY)
    coin = forms.CharField(max_length=16, required=False, help_text="e.g. LTC, BTC, USDT")
    crypto_amount = forms.DecimalField(
        max_digits=40, decimal_places=18, min_value=Decimal("0"), required=False
    )
    paid_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="When the provider received it (UTC). Empty: now.",
    )
    provider_payment_id = forms.CharField(max_length=200, required=False)

    field_order = [
        "tx_hash",
        "usd_amount",
        "coin",
        "crypto_amount",
        "paid_at",
        "provider_payment_id",
        "reason",
    ]


class ExtendDeadlineForm(ReasonForm):
    deadline = forms.ChoiceField()
    until = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="The new deadline (UTC); later than the current one.",
    )

    field_order = ["deadline", "until", "reason"]

    def __init__(self, *args: Any, obj: Escrow | None = None, **kwargs: Any) -> None:
        super().__init__(*args, obj=obj, **kwargs)
        running = escrow_staff.running_deadlines(obj) if obj is not None else []
        self.fields["deadline"].choices = [
            (
                name,
                f"{escrow_staff.DEADLINE_LABELS[name]} — now {getattr(obj, name):%Y-%m-%d %H:%M}",
            )
            for name in running
        ] or [(name, label) for name, label in escrow_staff.DEADLINE_LABELS.items()]


class ResolveDisputeForm(ReasonForm):
    resolution = forms.ChoiceField(
        choices=[
            ("refund", "Refund everything held to the buyer"),
            ("release", "Release to the seller"),
            ("split", "Split: pay each party the amount below; the rest is the platform's fee"),
        ],
        widget=forms.RadioSelect,
    )
    buyer_amount = forms.DecimalField(min_value=Decimal("0"), required=False, **MONEY)
    seller_amount = forms.DecimalField(min_value=Decimal("0"), required=False, **MONEY)

    field_order = ["resolution", "buyer_amount", "seller_amount", "reason"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("resolution") == "split" and (
            data.get("buyer_amount") is None or data.get("seller_amount") is None
        ):
            raise forms.ValidationError("A split needs both the buyer's and the seller's amount.")
        return data


# --- actions ---------------------------------------------------------------------------


def _moved(escrow: Escrow, verb: str) -> Done:
    return Done(f"Escrow {escrow.escrow_id} {verb}; it is now {escrow.get_status_display()}.")


def _run_confirm_by_hand(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    evidence = payments_staff.PaymentEvidence(
        tx_id=data["tx_hash"].strip(),
        usd_amount=data["usd_amount"],
        coin=data["coin"].strip(),
        crypto_amount=data["crypto_amount"],
        paid_at=data["paid_at"],
        provider_payment_id=data["provider_payment_id"].strip(),
    )
    return delivery_done(
        payments_staff.confirm_payment_by_hand(
            escrow_id=escrow.escrow_id,
            evidence=evidence,
            actor_id=request.user.pk,
            reason=data["reason"],
        )
    )


def _run_extend(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    updated = escrow_staff.extend_deadline(
        escrow_id=escrow.escrow_id,
        deadline=data["deadline"],
        until=data["until"],
        actor_id=request.user.pk,
        reason=data["reason"],
    )
    until: datetime = getattr(updated, data["deadline"])
    return Done(f"{data['deadline']} of {escrow.escrow_id} extended to {until:%Y-%m-%d %H:%M} UTC.")


def _run_cancel(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    return _moved(
        escrow_staff.cancel_escrow(
            escrow_id=escrow.escrow_id, actor_id=request.user.pk, reason=data["reason"]
        ),
        "cancelled",
    )


def _run_refund(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    return _moved(
        escrow_staff.refund_escrow(
            escrow_id=escrow.escrow_id, actor_id=request.user.pk, reason=data["reason"]
        ),
        "refunded to the buyer's wallet",
    )


def _run_release(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    return _moved(
        escrow_staff.release_escrow(
            escrow_id=escrow.escrow_id, actor_id=request.user.pk, reason=data["reason"]
        ),
        "released to the seller",
    )


def _run_resolve(request: HttpRequest, escrow: Escrow, data: dict[str, Any]) -> Done:
    split = data["resolution"] == "split"
    return _moved(
        escrow_staff.resolve_dispute(
            escrow_id=escrow.escrow_id,
            resolution=data["resolution"],
            buyer_amount=quantize_usd(data["buyer_amount"]) if split else None,
            seller_amount=quantize_usd(data["seller_amount"]) if split else None,
            actor_id=request.user.pk,
            reason=data["reason"],
        ),
        f"dispute resolved ({data['resolution']})",
    )


def _money_facts(request: HttpRequest, escrow: Escrow) -> dict[str, Any]:
    try:
        held = escrow.holding.account.balance
    except EscrowHolding.DoesNotExist:
        held = Decimal("0.00")
    return {
        "facts": [
            ("Status", escrow.get_status_display()),
            ("Amount / total due", f"{escrow.amount} / {escrow.total_due} {escrow.currency}"),
            ("Fees (buyer / seller)", f"{escrow.buyer_fee} / {escrow.seller_fee}"),
            ("Held now", f"{held} {escrow.currency}"),
        ]
    }


ESCROW_ACTIONS = (
    ObjectAction(
        name="confirm-payment",
        label="Confirm payment by hand",
        permission=perm("confirm_payment_by_hand"),
        run=_run_confirm_by_hand,
        form_class=ConfirmByHandForm,
        preview=_money_facts,
        help="Record a payment the provider never (successfully) told us about. It is "
        "processed exactly like the provider's webhook: over-, under- and late payments "
        "follow the usual rules, and the provider's own delivery of the same transaction "
        "later is recognised as a duplicate.",
        confirm_label="Confirm payment",
    ),
    ObjectAction(
        name="extend-deadline",
        label="Extend a deadline",
        permission=perm("extend_deadline"),
        run=_run_extend,
        form_class=ExtendDeadlineForm,
        applies=lambda e: bool(escrow_staff.running_deadlines(e)),
        help="Move a running deadline later. The sweep acts on the new time.",
        confirm_label="Extend deadline",
    ),
    ObjectAction(
        name="cancel",
        label="Cancel",
        permission=perm("cancel_escrow"),
        run=_run_cancel,
        applies=lambda e: can_transition(e.status, S.CANCELLED),
        preview=_money_facts,
        help="Cancel an escrow that holds no money yet.",
        confirm_label="Cancel escrow",
    ),
    ObjectAction(
        name="refund",
        label="Refund to buyer",
        permission=perm("refund_escrow"),
        run=_run_refund,
        applies=lambda e: can_transition(e.status, S.REFUNDED) and e.status != S.DISPUTED,
        preview=_money_facts,
        help="Return everything held, fee included, to the buyer's wallet.",
        confirm_label="Refund",
    ),
    ObjectAction(
        name="release",
        label="Release to seller",
        permission=perm("release_escrow"),
        run=_run_release,
        applies=lambda e: e.status in (S.ACTIVE, S.DELIVERED),
        preview=_money_facts,
        help="Pay the seller the amount net of their fee share.",
        confirm_label="Release",
    ),
    ObjectAction(
        name="resolve-dispute",
        label="Resolve dispute",
        permission=perm("resolve_dispute"),
        run=_run_resolve,
        form_class=ResolveDisputeForm,
        applies=lambda e: e.status == S.DISPUTED,
        preview=_money_facts,
        help="End the dispute: refund, release, or split the held money.",
        confirm_label="Resolve",
    ),
)


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


# --- admins ----------------------------------------------------------------------------


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
