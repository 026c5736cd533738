"""The one domain-error hierarchy: services raise these when a business rule says no."""

from typing import Any


class ApplicationError(Exception):
    """A rule refused the operation; nothing was written. `extra` carries details for callers."""

    def __init__(self, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


class NotFound(ApplicationError):
    """The thing the caller named does not exist."""


class IllegalTransition(ApplicationError):
    """The escrow's state machine does not allow this move from the current status."""


class LedgerError(ApplicationError):
    """A transfer was refused (bad amount, insufficient funds, idempotency clash)."""


class IdempotencyConflict(LedgerError):
    """The idempotency key was already used for a transfer with different fields."""


class InsufficientFunds(LedgerError):
    """The debited account would go below zero and is not allowed to."""
