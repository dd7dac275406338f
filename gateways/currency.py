"""Minor units: ours are ISO 4217's; a gateway may count some currencies differently.

Every amount in orderstatus is an integer in the currency's ISO 4217 minor unit (cents for USD,
yen for JPY, fils for KWD). ``ISO_EXPONENTS`` lists the currencies whose exponent is not 2.
"""

from __future__ import annotations

ISO_EXPONENTS: dict[str, int] = {
    # ISO 4217 exponent 0.
    **dict.fromkeys(
        [
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX",
            "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ],
        0,
    ),
    # ISO 4217 exponent 3.
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    # ISO 4217 exponent 4.
    "CLF": 4,
    "UYW": 4,
}  # fmt: skip


def iso_exponent(currency: str) -> int:
    """How many decimal places the ISO 4217 minor unit of ``currency`` has (2 unless listed)."""
    return ISO_EXPONENTS.get(currency.upper(), 2)


def rescale(amount: int, *, from_exponent: int, to_exponent: int) -> int:
    """``amount`` counted in 10**-from_exponent units, counted in 10**-to_exponent units.

    Raises ValueError when the amount cannot be expressed exactly (e.g. 150 of a two-decimal
    currency into a zero-decimal count), so no amount is ever rounded silently.
    """
    shift = to_exponent - from_exponent
    if shift >= 0:
        return amount * int(10**shift)
    factor = int(10**-shift)
    whole, remainder = divmod(amount, factor)
    if remainder:
        raise ValueError(
            f"amount {amount} cannot be expressed with {to_exponent} decimals "
            f"(it has {from_exponent})"
        )
    return whole
