"""What a dispatch run reports: one result per claimed row, and rows left waiting."""

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ItemResult:
    """What happened to one claimed row; `outcome` is sent, failed, dead or lease_lost."""

    id: int
    key: str
    channel: str
    event: str
    outcome: str
    attempts: int
    next_attempt_at: datetime | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "sent"


@dataclass
class DispatchReport:
    """One dispatch run: each claimed row's result, and due rows left waiting for config."""

    items: list[ItemResult] = field(default_factory=list)
    # channel -> (due rows left pending, why)
    waiting: dict[str, tuple[int, str]] = field(default_factory=dict)

    def count(self, outcome: str) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    @property
    def failures(self) -> list[ItemResult]:
        return [item for item in self.items if not item.ok]

    @property
    def waiting_count(self) -> int:
        return sum(count for count, _ in self.waiting.values())
