"""Post-processing checks on a pipeline step's output: cheap validation without ground truth.

`amounts_consistent`: on an invoice-like text, the amount on the `total` line must equal the sum of the amounts
that end the other lines (items, tax). OCR that misreads a digit or a separator breaks the sum, so the check tells
a wrong reading even when the recogniser is confident. Texts without a total line, or with nothing to add up,
are not invoices: the check does not apply (None).
"""

from __future__ import annotations

import re

_AMOUNT = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)\.(\d{2})\s*$")
_TOTAL_LINE = re.compile(r"\btotal", re.IGNORECASE)
_SUBTOTAL = re.compile(r"sub\s*-?\s*total|net\s*total", re.IGNORECASE)


def _cents(line: str) -> int | None:
    found = _AMOUNT.search(line.strip())
    if not found:
        return None
    return int(found.group(1).replace(",", "")) * 100 + int(found.group(2))


def amounts_consistent(text: str) -> bool | None:
    """True when the total equals the sum of the other line amounts, False when not (or the total is
    unreadable), None when the text has no total line or no other amounts."""
    lines = [line for line in text.splitlines() if line.strip()]
    totals = [line for line in lines if _TOTAL_LINE.search(line) and not _SUBTOTAL.search(line)]
    if not totals:
        return None
    parts = [c for line in lines if line not in totals and not _SUBTOTAL.search(line) and (c := _cents(line))]
    if not parts:
        return None
    total = _cents(totals[-1])
    return total is not None and total == sum(parts)
