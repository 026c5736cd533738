"""The staff audit log: one append-only row per staff action, written with its effects."""

from typing import Any

from django.db import transaction

from escrow.models import Escrow, StaffAction
from escrowsite.errors import ApplicationError


def record_staff_action(
    *,
    actor_id: int,
    action: str,
    reason: str,
    escrow: Escrow | None = None,
    target: str = "",
    changes: dict[str, Any] | None = None,
) -> StaffAction:
    """Write the audit row inside the caller's transaction (so a failed action leaves none).

    A reason is mandatory: staff must say why, and the database refuses an empty one too.
    """
    if not (reason or "").strip():
        raise ApplicationError("A reason is required for every staff action.")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("record_staff_action must run inside the action's transaction")
    return StaffAction.objects.create(
        actor_id=actor_id,
        action=action,
        reason=reason.strip(),
        escrow=escrow,
        target=target,
        changes=changes or {},
    )
