"""Strict parsing of the numbers operators type: table IDs, priorities, options.

ASCII decimal digits only: ``int()`` alone would also take ``+1100``,
``1_1_0_0``, `` 1100 `` and digits of other scripts (Arabic-Indic, fullwidth),
so that one value could be written many ways. Pure.
"""

from __future__ import annotations


def is_decimal(text: str) -> bool:
    """ASCII digits only, at least one (what ``[0-9]+`` matches, without
    compiling a pattern at start-up)."""
    return text.isascii() and text.isdigit()


class NumberError(ValueError):
    """``text`` is not an accepted number; the message names ``what`` and the value."""


def parse_decimal(what: str, text: str, lo: int, hi: int) -> int:
    """``text`` as an integer in ``lo``-``hi``: ASCII digits, no sign, no
    leading zero (``0`` itself excepted). Raises NumberError naming ``what``."""
    if not is_decimal(text):
        raise NumberError(f"{what} {text!r} is not a decimal number")
    digits = text.lstrip("0") or "0"
    # Compare lengths first: int() of a huge string is slow and pointless.
    if len(digits) > len(str(hi)) or int(digits) > hi or int(digits) < lo:
        raise NumberError(f"{what} {text!r} is out of range {lo}-{hi}")
    if digits != text:
        raise NumberError(f"{what} {text!r} has a leading zero; write {digits}")
    return int(digits)
