"""Shared test helpers: refusing operations inside a savepoint and ledger snapshots."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import transaction

from wallets.models import Account, Transaction, Transfer


@contextmanager
def refused(exc: type[BaseException], match: str | None = None) -> Iterator[Any]:
    """Expect `exc`, rolled back to a savepoint so the test's transaction stays usable.

    (A refused posting marks the enclosing atomic block for rollback, as it should in a
    real unit of work; the savepoint stands in for that unit of work.)
    """
    with pytest.raises(exc, match=match) as info, transaction.atomic():
        yield info


def ledger_state() -> dict[str, Any]:
    """Every ledger row and balance; equal before and after means nothing was written."""
    return {
        "balances": dict(Account.objects.values_list("pk", "balance")),
        "transfers": list(Transfer.objects.order_by("pk").values()),
        "records": list(Transaction.objects.order_by("pk").values()),
    }
