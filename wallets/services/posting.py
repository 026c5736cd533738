"""Posting one adjustment: the ledger transfer, its transaction record and its audit row."""

from decimal import Decimal

from django.utils import timezone

from escrow.models import StaffAction
from wallets import ledger
from wallets.models import (
    Account,
    AccountKind,
    AdjustmentRequest,
    Customer,
    Transaction,
    TransactionType,
    TransferKind,
)
from wallets.services.common import AdjustmentOutcome, _direction


def _post(
    *,
    customer: Customer,
    amount: Decimal,
    currency: str,
    reason: str,
    actor_id: int,
    key: str,
    action: str,
    request: AdjustmentRequest | None = None,
) -> AdjustmentOutcome:
    """Post one adjustment and write its record and audit row, unless `key` was posted.

    A replayed key returns the earlier transfer and record and writes nothing else: the
    record is looked up after the ledger took the wallet lock, so a concurrent identical
    adjustment has committed (or rolled back) by then.
    """
    wallet = ledger.customer_wallet(customer=customer, currency=currency)
    staff_account = ledger.system_account(kind=AccountKind.STAFF_ADJUSTMENTS, currency=currency)
    debit, credit = (staff_account, wallet) if amount > 0 else (wallet, staff_account)
    direction = _direction(amount)
    transfer = ledger.post_transfer(
        debit=debit,
        credit=credit,
        amount=abs(amount),
        kind=TransferKind.STAFF_ADJUSTMENT,
        idempotency_key=key,
        reference=f"adjustment request #{request.pk}" if request else "",
        memo=reason,
        actor_id=actor_id,
    )
    balance = Account.objects.values_list("balance", flat=True).get(pk=wallet.pk)
    existing = transfer.transactions.filter(type=TransactionType.STAFF_ADJUSTMENT).first()
    if existing is not None:
        return AdjustmentOutcome(
            status="posted",
            customer_id=customer.pk,
            amount=amount,
            currency=currency,
            transfer=transfer,
            record=existing,
            request=request,
            balance=balance,
            replayed=True,
        )

    record = Transaction.objects.create(
        transaction_id=f"ADJ_{customer.pk}_{transfer.pk}",
        customer=customer,
        type=TransactionType.STAFF_ADJUSTMENT,
        amount=abs(amount),
        currency=currency,
        description=f"Staff {direction} of {abs(amount)} {currency}: {reason}"[:500],
        confirmed_at=timezone.now(),
    )
    record.transfers.add(transfer)
    changes = {
        "customer_id": customer.pk,
        "amount": f"{amount:+}",
        "currency": currency,
        "direction": direction,
        "balance_before": str(balance - amount),
        "balance_after": str(balance),
        "transfer_id": transfer.pk,
        "transaction_id": record.transaction_id,
    }
    if request is not None:
        changes["request_id"] = request.pk
        changes["requested_by"] = request.requested_by_id
    staff_action = StaffAction.objects.create(
        actor_id=actor_id,
        action=action,
        reason=reason,
        escrow=None,
        target=f"customer {customer.pk}",
        changes=changes,
    )
    return AdjustmentOutcome(
        status="posted",
        customer_id=customer.pk,
        amount=amount,
        currency=currency,
        transfer=transfer,
        record=record,
        request=request,
        staff_action=staff_action,
        balance=balance,
    )
