"""Money parsing: exact decimals only, in ASCII digits."""

from decimal import Decimal

import pytest

from wallets.money import parse_decimal


@pytest.mark.parametrize("text", ["\u0661\u0660\u0661", "１０１", "101\u00a0"])
def test_other_scripts_digits_are_not_money(text):
    with pytest.raises(ValueError):
        parse_decimal(text)


def test_ascii_decimal_strings_parse_exactly():
    assert parse_decimal(" 101.00 ") == Decimal("101.00")
    with pytest.raises(ValueError):
        parse_decimal(101.0)
