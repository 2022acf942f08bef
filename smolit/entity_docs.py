"""Seeded invoices and contracts in varied layouts, with their true fields (for `smolit bench pipelines` and tests).

Invoices: three layouts (a labelled letterhead invoice, a `From:/To:` form with currency symbols, a prose
paragraph), four currencies, amounts as `1,284.50` or `1.284,50`, dates ISO, `04.03.2026`, `4 March 2026` or
`March 4, 2026`. Contracts: three phrasings of the parties (`by and between X ("Provider") and Y`, `Parties: X and
Y`, `between X, a company incorporated in C, and Y`), effective dates and terms in the same date styles, governing
law by clause or label. The true fields are in the step's normal form (`agents.entity_fields`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

from smolit.agents.entity_fields import FieldValue

COMPANIES = (
    "Nordwind Office Supplies GmbH",
    "Blue Harbour Logistics Ltd",
    "Alpine Print & Paper AG",
    "Meridian IT Services BV",
    "Cedar Facility Management SA",
    "Oakline Catering Co",
    "Kestrel Analytics Inc",
    "Vantage Freight Partners LLC",
    "Silverline Consulting Group",
    "Harper Medical Supplies Ltd",
)
PEOPLE = ("Jane Miller", "Tomasz Nowak", "Priya Raman", "David Okafor", "Laura Bianchi")
ITEMS = ("Printer paper A4", "Toner cartridge", "Server maintenance", "Cleaning service", "Freight charges",
         "Software licence", "Consulting hours", "Travel expenses")  # fmt: skip
LAWS = ("Germany", "England and Wales", "New York", "Switzerland", "the Netherlands", "Ireland")
SYMBOL = {"EUR": "€", "USD": "$", "GBP": "£"}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")  # fmt: skip


@dataclass(frozen=True)
class SampleDocument:
    kind: str
    layout: str
    text: str
    truth: dict[str, FieldValue]


def _money(cents: int, style: str) -> str:
    whole, rest = f"{cents // 100:,}", f"{cents % 100:02d}"
    return f"{whole.replace(',', '.')},{rest}" if style == "eu" else f"{whole}.{rest}"


def _plain(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _date(d: date, style: str) -> str:
    if style == "iso":
        return d.isoformat()
    if style == "numeric":
        return f"{d.day:02d}.{d.month:02d}.{d.year}"
    if style == "words":
        return f"{d.day} {MONTHS[d.month - 1]} {d.year}"
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def _amount(cents: int, currency: str, rng: random.Random, symbols: bool) -> str:
    style = "eu" if currency in ("EUR", "CHF") and rng.random() < 0.4 else "us"
    if symbols and currency in SYMBOL:
        return f"{SYMBOL[currency]}{_money(cents, style)}"
    return f"{currency} {_money(cents, style)}" if rng.random() < 0.7 else f"{_money(cents, style)} {currency}"


def _day(rng: random.Random) -> date:
    return date(rng.randint(2023, 2026), rng.randint(1, 12), rng.randint(1, 28))


def random_invoice_doc(rng: random.Random, layout: str | None = None) -> SampleDocument:
    layout = layout or rng.choice(("letterhead", "form", "prose"))
    seller, buyer = rng.sample(COMPANIES, 2)
    currency = rng.choice(("EUR", "USD", "GBP", "CHF"))
    number = rng.choice((f"INV-{rng.randint(2020, 2026)}-{rng.randint(1, 9999):04d}", f"{rng.randint(10000, 99999)}",
                         f"{rng.randint(2020, 2026)}/{rng.randint(1, 999):03d}"))  # fmt: skip
    issued = _day(rng)
    due = issued + timedelta(days=rng.choice((14, 30, 45)))
    dstyle = rng.choice(("iso", "numeric", "words", "us"))
    items = [(rng.choice(ITEMS), rng.randint(500, 250_000)) for _ in range(rng.randint(1, 3))]
    vat = round(sum(c for _, c in items) * rng.choice((0, 7, 19, 20)) / 100)
    total = sum(c for _, c in items) + vat
    symbols = layout == "form"
    money = [(desc, _amount(c, currency, rng, symbols)) for desc, c in items]
    vat_text = _amount(vat, currency, rng, symbols)
    total_text = _amount(total, currency, rng, symbols)
    lines = [_plain(c) for _, c in items] + ([_plain(vat)] if vat else [])
    if layout == "letterhead":
        text = "\n".join(
            [
                seller,
                "INVOICE",
                f"Invoice number: {number}",
                f"Invoice date: {_date(issued, dstyle)}",
                f"Due date: {_date(due, dstyle)}",
                f"Bill to: {buyer}",
                "",
                *(f"{desc}   {m}" for desc, m in money),
                *([f"VAT   {vat_text}"] if vat else []),
                f"Total due: {total_text}",
            ]
        )
    elif layout == "form":
        text = "\n".join(
            [
                "INVOICE",
                f"From: {seller}",
                f"To: {buyer}",
                f"Invoice #: {number}",
                f"Issued: {_date(issued, dstyle)}",
                f"Payment due: {_date(due, dstyle)}",
                *(f"{desc}: {m}" for desc, m in money),
                *([f"Tax: {vat_text}"] if vat else []),
                f"Amount due: {total_text}",
            ]
        )
    else:
        parts = " and ".join(f"{desc.lower()} ({m})" for desc, m in money)
        tax = f" plus tax of {vat_text}" if vat else ""
        text = (
            f"{seller} issued invoice no. {number} to {buyer} on {_date(issued, dstyle)}. "
            f"The invoice covers {parts}{tax}. The total of {total_text} is payable by {_date(due, dstyle)}."
        )
    truth: dict[str, FieldValue] = {
        "invoice_number": number,
        "issue_date": issued.isoformat(),
        "due_date": due.isoformat(),
        "seller": seller,
        "buyer": buyer,
        "total": _plain(total),
        "currency": currency,
        "line_amounts": tuple(lines),
    }
    return SampleDocument("invoice", layout, text, truth)


def random_contract_doc(rng: random.Random, layout: str | None = None) -> SampleDocument:
    layout = layout or rng.choice(("clauses", "labelled", "recital"))
    first = rng.choice(COMPANIES)
    second = rng.choice([c for c in (*COMPANIES, *PEOPLE) if c != first])
    currency = rng.choice(("EUR", "USD", "GBP", "CHF"))
    effective = _day(rng)
    dstyle = rng.choice(("iso", "numeric", "words", "us"))
    months = rng.choice((6, 12, 18, 24, 36))
    term = f"{months // 12} years" if months % 12 == 0 and months > 12 else f"{months} months"
    term_text = term if rng.random() < 0.7 else f"{months} months"
    term_truth = f"{months} months" if term_text.endswith("months") else term
    law = rng.choice(LAWS)
    fee = rng.randint(100_000, 5_000_000)
    fee_text = _amount(fee, currency, rng, symbols=rng.random() < 0.3)
    if layout == "clauses":
        text = (
            "SERVICE AGREEMENT\n"
            f'This Service Agreement (the "Agreement") is entered into as of {_date(effective, dstyle)} by and between '
            f'{first} ("Provider") and {second} ("Client").\n'
            f"1. Term. This Agreement shall remain in force for a term of {term_text} from the Effective Date.\n"
            f"2. Fees. Client shall pay Provider a monthly fee of {fee_text}.\n"
            f"3. Governing law. This Agreement shall be governed by the laws of {law}."
        )
    elif layout == "labelled":
        text = "\n".join(
            [
                "CONSULTING CONTRACT",
                f"Parties: {first} and {second}",
                f"Effective date: {_date(effective, dstyle)}",
                f"Term: {term_text}, renewable by written agreement",
                f"Fee: {fee_text} per month",
                f"Governing law: {law}",
            ]
        )
    else:
        text = (
            f"This agreement, dated {_date(effective, dstyle)}, is made between {first}, a company incorporated in "
            f"{rng.choice(LAWS)}, and {second}. The parties agree that the services run for a period of {term_text}. "
            f"The client pays {fee_text} for the services. This agreement is governed by and construed in accordance "
            f"with the laws of {law}."
        )
    truth: dict[str, FieldValue] = {
        "parties": (first, second),
        "effective_date": effective.isoformat(),
        "term": term_truth,
        "governing_law": law.removeprefix("the "),
        "amounts": (_plain(fee),),
    }
    return SampleDocument("contract", layout, text, truth)


def sample_documents(n: int, seed: int) -> list[SampleDocument]:
    """`n` documents, half invoices and half contracts, layouts in turn, seeded."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 2 == 0:
            docs.append(random_invoice_doc(rng, ("letterhead", "form", "prose")[(i // 2) % 3]))
        else:
            docs.append(random_contract_doc(rng, ("clauses", "labelled", "recital")[(i // 2) % 3]))
    return docs
