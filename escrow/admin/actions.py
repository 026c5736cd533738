"""The audited repairs on an escrow's page: their forms, the facts shown, the service calls."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.http import HttpRequest

from escrow import staff as escrow_staff
from escrow.models import Escrow, EscrowHolding, EscrowStatus
from escrow.transitions import can_transition
from escrowsite.admin import Done, ObjectAction, ReasonForm, perm
from payments import staff as payments_staff
from payments.admin import delivery_done
from wallets.money import quantize_usd

S = EscrowStatus
MONEY = {"max_digits": 20, "decimal_places": 2}


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
