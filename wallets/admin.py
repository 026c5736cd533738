"""Staff view of customers, ledger accounts, transfers and transaction records.

Everything here is read-only: money moves only through wallets.ledger, called by services.
The one write staff make is a wallet adjustment (wallets.services.adjust_wallet), which
above the approval threshold becomes a request that another staff member approves here.
"""

import uuid
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

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
from wallets import services as wallet_services
from wallets.models import (
    Account,
    AccountKind,
    AdjustmentRequest,
    AdjustmentStatus,
    Customer,
    Transaction,
    Transfer,
)
from wallets.money import MONEY_DIGITS, MONEY_PLACES

# Rows per page of an account's ledger history, and per section of a customer's page.
PAGE = 50


def _url(name: str, *args: Any) -> str:
    return reverse(f"admin:{name}", args=args)


def ledger_page(
    account: Account, *, before: int | None, size: int = PAGE
) -> tuple[list, int | None]:
    """One page of an account's transfers, newest first, and the id to page on from.

    Keyset pagination over two index-served queries (debits, credits) merged here: no
    OFFSET and no COUNT, so the last page of a million-row clearing account costs what
    the first does. Returns ([(transfer, signed amount)], next `before` or None).
    """
    base = Transfer.objects.select_related("debit_account", "credit_account", "escrow", "actor")
    if before is not None:
        base = base.filter(pk__lt=before)
    rows = list(base.filter(debit_account=account).order_by("-pk")[: size + 1])
    rows += list(base.filter(credit_account=account).order_by("-pk")[: size + 1])
    rows.sort(key=lambda t: t.pk, reverse=True)
    page = [(t, t.amount if t.credit_account_id == account.pk else -t.amount) for t in rows[:size]]
    return page, (page[-1][0].pk if len(rows) > size else None)


# --- wallet adjustments ----------------------------------------------------------------


class AdjustWalletForm(ReasonForm):
    amount = forms.DecimalField(
        max_digits=MONEY_DIGITS,
        decimal_places=MONEY_PLACES,
        help_text="Positive credits the wallet, negative debits it (USD).",
    )
    # Generated when the form is shown: submitting the same form twice is one adjustment.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=100)

    field_order = ["amount", "reason", "idempotency_key"]

    def __init__(self, *args: Any, obj: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, obj=obj, **kwargs)
        self.fields["idempotency_key"].initial = f"admin:{uuid.uuid4().hex}"
        threshold = wallet_services.approval_threshold()
        hours = wallet_services.approval_window_hours()
        self.fields["amount"].help_text += (
            f" Above {threshold} (either way), counted with your own adjustments of this "
            f"customer in the last {hours:g} hours, it needs a second staff member's approval."
        )

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("The amount must not be zero.")
        return amount


def _customer_id(obj: Customer | Account) -> int:
    return obj.pk if isinstance(obj, Customer) else obj.customer_id


def _run_adjust(request: HttpRequest, obj: Customer | Account, data: dict[str, Any]) -> Done:
    customer_id = _customer_id(obj)
    # The wallet services join their caller's transaction; an admin action is a top-level
    # unit of work, so it is the durable one.
    with transaction.atomic(durable=True):
        outcome = wallet_services.adjust_wallet(
            customer_id=customer_id,
            amount=data["amount"],
            reason=data["reason"],
            actor_id=request.user.pk,
            idempotency_key=data["idempotency_key"],
        )
    if outcome.replayed:
        return Done("This adjustment was already submitted; nothing new was done.", messages.INFO)
    if outcome.posted:
        verb = "credited" if outcome.amount > 0 else "debited"
        return Done(
            f"Wallet of customer {customer_id} {verb} {abs(outcome.amount)} {outcome.currency}; "
            f"balance now {outcome.balance}."
        )
    request_id = outcome.request.pk
    return Done(
        f"{outcome.amount}, with your own recent adjustments of this customer, is above the "
        f"approval threshold: request #{request_id} now waits for a second staff member's "
        "approval. Nothing was posted yet.",
        messages.WARNING,
        _url("wallets_adjustmentrequest_change", request_id),
    )


def _wallet_facts(request: HttpRequest, obj: Customer | Account) -> dict[str, Any]:
    customer_id = _customer_id(obj)
    balances = Account.objects.filter(kind=AccountKind.CUSTOMER, customer_id=customer_id)
    return {
        "facts": [("Customer", customer_id)]
        + [(f"Wallet {a.currency}", a.balance) for a in balances.order_by("currency")]
        + [("Approval threshold", wallet_services.approval_threshold())]
    }


ADJUST = ObjectAction(
    name="adjust",
    label="Adjust wallet",
    permission=perm("adjust_wallet"),
    run=_run_adjust,
    form_class=AdjustWalletForm,
    applies=lambda obj: isinstance(obj, Customer) or obj.kind == AccountKind.CUSTOMER,
    preview=_wallet_facts,
    help="Credit or debit the customer's wallet through the ledger, audited. Above the "
    "approval threshold this creates a request for another staff member to approve.",
    confirm_label="Adjust",
)


def _run_approve(request: HttpRequest, obj: AdjustmentRequest, data: dict[str, Any]) -> Done:
    with transaction.atomic(durable=True):
        outcome = wallet_services.approve_adjustment(
            request_id=obj.pk, actor_id=request.user.pk, reason=data["reason"]
        )
    return Done(
        f"Request #{obj.pk} approved and posted: customer {obj.customer_id}'s wallet is now "
        f"{outcome.balance} {outcome.currency}."
    )


def _run_reject(request: HttpRequest, obj: AdjustmentRequest, data: dict[str, Any]) -> Done:
    with transaction.atomic(durable=True):
        wallet_services.reject_adjustment(
            request_id=obj.pk, actor_id=request.user.pk, reason=data["reason"]
        )
    return Done(f"Request #{obj.pk} rejected; nothing was posted.", messages.INFO)


def _is_pending(obj: AdjustmentRequest) -> bool:
    return obj.status == AdjustmentStatus.PENDING


def _request_facts(request: HttpRequest, obj: AdjustmentRequest) -> dict[str, Any]:
    return {
        "facts": [
            ("Customer", obj.customer_id),
            ("Amount", f"{obj.amount:+} {obj.currency}"),
            ("Requested by", obj.requested_by),
            ("Requested at", obj.requested_at),
            ("Their reason", obj.reason),
        ]
    }


# --- admins ----------------------------------------------------------------------------


@admin.register(Customer)
class CustomerAdmin(ObjectActionsMixin, ExactSearchMixin, ReadOnlyAdmin):
    list_display = ("telegram_id", "username", "email", "created_at")
    search_fields = ("telegram_id", "username")
    search_help_text = "Exact Telegram id or username."
    ordering = ("-created_at",)
    object_actions = (ADJUST,)
    sections_template = "admin/wallets/customer/sections.html"

    def search_q(self, term: str) -> Q:
        q = Q(username=term.lstrip("@"))
        if (telegram_id := as_int(term)) is not None:
            q |= Q(telegram_id=telegram_id)
        return q

    def section_context(self, request: HttpRequest, customer: Customer) -> dict[str, Any]:
        wallets = list(customer.accounts.order_by("currency"))
        transactions = list(
            Transaction.objects.filter(customer=customer)
            .select_related("escrow")
            .order_by("-created_at", "-pk")[: PAGE + 1]
        )
        requests = list(
            AdjustmentRequest.objects.filter(customer=customer)
            .select_related("requested_by", "decided_by")
            .order_by("-requested_at", "-pk")[: PAGE + 1]
        )
        by_customer = f"customer__telegram_id__exact={customer.pk}"
        return {
            "wallets": wallets,
            "transactions": transactions[:PAGE],
            "transactions_more": len(transactions) > PAGE,
            "transactions_url": f"{_url('wallets_transaction_changelist')}?{by_customer}",
            "adjustment_requests": requests[:PAGE],
            "requests_more": len(requests) > PAGE,
            "requests_url": f"{_url('wallets_adjustmentrequest_changelist')}?{by_customer}",
        }


@admin.register(Account)
class AccountAdmin(ObjectActionsMixin, ExactSearchMixin, ReadOnlyAdmin):
    list_display = ("id", "kind", "owner", "currency", "balance", "created_at")
    list_filter = ("kind",)
    search_fields = ("customer__telegram_id", "escrow__escrow_id", "provider")
    search_help_text = "Exact: customer (Telegram) id, escrow id, provider, or #account id."
    ordering = ("kind", "pk")
    object_actions = (ADJUST,)
    sections_template = "admin/wallets/account/ledger.html"

    def search_q(self, term: str) -> Q:
        # Only clearing accounts have a provider: the kind lets an index serve the branch.
        q = Q(escrow_id__in=escrow_pks(term)) | Q(kind=AccountKind.PROVIDER_CLEARING, provider=term)
        if (number := as_int(term)) is not None:
            q |= Q(customer_id=number) | Q(pk=number)
        return q

    @admin.display(description="owner")
    def owner(self, account: Account) -> str:
        if account.kind == AccountKind.CUSTOMER:
            return f"customer {account.customer_id}"
        if account.kind == AccountKind.ESCROW_HOLDING:
            return format_html(
                '<a href="{}">escrow #{}</a>',
                _url("escrow_escrow_change", account.escrow_id),
                account.escrow_id,
            )
        return account.provider or account.get_kind_display()

    def section_context(self, request: HttpRequest, account: Account) -> dict[str, Any]:
        before = as_int(request.GET.get("before", ""))
        page, next_before = ledger_page(account, before=before)
        return {"ledger": page, "ledger_next": next_before, "ledger_paged": before is not None}


@admin.register(Transfer)
class TransferAdmin(ExactSearchMixin, ReadOnlyAdmin):
    """Ledger rows: append-only (a database trigger refuses edits and deletes)."""

    list_display = (
        "id",
        "created_at",
        "kind",
        "amount",
        "currency",
        "debit_account",
        "credit_account",
        "escrow",
        "reference",
        "actor",
    )
    list_filter = ("kind", "created_at")
    list_select_related = ("debit_account", "credit_account", "escrow", "actor")
    search_fields = ("idempotency_key", "reference", "escrow__escrow_id")
    search_help_text = "Exact: idempotency key, reference (provider:txid), escrow id, or #id."
    ordering = ("-pk",)

    def search_q(self, term: str) -> Q:
        q = Q(idempotency_key=term) | Q(reference=term) | Q(escrow_id__in=escrow_pks(term))
        if (pk := as_int(term)) is not None:
            q |= Q(pk=pk)
        return q

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        pk = as_int(object_id)
        queryset = self.get_queryset(request).select_related(
            "debit_account", "credit_account", "escrow", "actor", "reverses"
        )
        return queryset.filter(pk=pk).first() if pk is not None else None


@admin.register(Transaction)
class TransactionAdmin(ExactSearchMixin, ReadOnlyAdmin):
    """Customer-facing records (ESC_..., OVP_..., LATE_...); money moves as their transfers."""

    list_display = (
        "transaction_id",
        "created_at",
        "type",
        "customer",
        "amount",
        "currency",
        "crypto_amount",
        "crypto_currency",
        "provider",
        "escrow",
        "status",
    )
    list_filter = ("type", "status", "created_at")
    list_select_related = ("customer", "escrow")
    search_fields = ("transaction_id", "external_tx_id", "escrow__escrow_id")
    search_help_text = "Exact: transaction id, provider tx id, escrow id, or customer id."
    ordering = ("-created_at", "-pk")
    readonly_fields = ("transfer_links",)
    exclude = ("transfers",)

    def search_q(self, term: str) -> Q:
        q = Q(transaction_id=term) | Q(external_tx_id=term) | Q(escrow_id__in=escrow_pks(term))
        if (customer := as_int(term)) is not None:
            q |= Q(customer_id=customer)
        return q

    @admin.display(description="ledger transfers")
    def transfer_links(self, record: Transaction) -> str:
        transfers = record.transfers.order_by("pk")
        return (
            format_html_join(
                ", ",
                '<a href="{}">#{} {} {}</a>',
                (
                    (_url("wallets_transfer_change", t.pk), t.pk, t.kind, t.amount)
                    for t in transfers
                ),
            )
            or "-"
        )


@admin.register(AdjustmentRequest)
class AdjustmentRequestAdmin(ObjectActionsMixin, ExactSearchMixin, ReadOnlyAdmin):
    """Wallet adjustments above the threshold, waiting for (or decided by) a second person."""

    list_display = (
        "id",
        "requested_at",
        "customer",
        "amount",
        "currency",
        "status",
        "requested_by",
        "decided_by",
        "decided_at",
    )
    list_filter = ("status",)
    list_select_related = ("customer", "requested_by", "decided_by")
    search_fields = ("customer__telegram_id",)
    search_help_text = "Exact customer (Telegram) id or #request id."
    ordering = ("-requested_at", "-pk")
    object_actions = (
        ObjectAction(
            name="approve",
            label="Approve and post",
            permission=perm("approve_adjustment"),
            run=_run_approve,
            applies=_is_pending,
            preview=_request_facts,
            help="Post this adjustment now. You must not be the staff member who requested it.",
            confirm_label="Approve and post",
        ),
        ObjectAction(
            name="reject",
            label="Reject",
            permission=perm("approve_adjustment"),
            run=_run_reject,
            applies=_is_pending,
            preview=_request_facts,
            help="Refuse this adjustment; nothing is posted.",
            confirm_label="Reject",
        ),
    )

    def search_q(self, term: str) -> Q:
        number = as_int(term)
        return Q(customer_id=number) | Q(pk=number) if number is not None else Q(pk__in=[])

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        pk = as_int(object_id)
        queryset = self.get_queryset(request).select_related(
            "customer", "requested_by", "decided_by", "transfer"
        )
        return queryset.filter(pk=pk).first() if pk is not None else None
