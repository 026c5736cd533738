"""Fixtures the escrow tests share."""

import pytest

from escrow.sweeps import items as sweep_items
from escrow.sweeps.selection import claim_queryset


@pytest.fixture
def orm_claim_agrees_with_sql_claim(monkeypatch):
    """The demo's SQLite claims escrows through the ORM, PostgreSQL through one SQL
    statement: with this fixture every claim runs both, and they must find the same rows
    with the same guards (db_now aside: Django's Now() is the statement's time)."""
    sql_claim = sweep_items._claim_many

    def both(rule, escrow_pks, *, lock):
        rows = sql_claim(rule, escrow_pks, lock=lock)
        orm_rows = list(claim_queryset(rule, escrow_pks, lock=lock))
        assert [_without_clock(r) for r in orm_rows] == [_without_clock(r) for r in rows]
        return rows

    monkeypatch.setattr(sweep_items, "_claim_many", both)


def _without_clock(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "db_now"}
