"""Money helpers: the one rounding rule and decimal parsing that never passes through float."""

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

USD = "USD"
CENT = Decimal("0.01")
# Ledger columns: 20 digits with 2 decimals (fiat). Crypto amounts have their own fields.
MONEY_DIGITS = 20
MONEY_PLACES = 2


def quantize_usd(amount: Decimal) -> Decimal:
    """Round a USD amount to cents, half up: the only rounding rule in the project."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def parse_decimal(value: object) -> Decimal:
    """Parse a decimal from a string, int or Decimal; floats are refused (lossy).

    Raises ValueError with a readable message for anything else, NaN or infinities.
    """
    if isinstance(value, bool | float):
        raise ValueError(f"not an exact decimal: {value!r}")
    if isinstance(value, (int, Decimal)):
        result = Decimal(value)
    elif isinstance(value, str):
        if not value.isascii():
            # Decimal() also reads other scripts' digits ("١٠١" is 101): money is ASCII.
            raise ValueError(f"not a decimal: {value!r}")
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal: {value!r}") from None
    else:
        raise ValueError(f"not a decimal: {value!r}")
    if not result.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return result
