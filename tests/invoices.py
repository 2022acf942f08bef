"""A test invoice: rendered to an image by `smolit.bench_pipelines.render`, read back by OCR in the tests."""

from smolit.bench_pipelines import Invoice

INVOICE = Invoice(
    vendor="Nordwind Office Supplies GmbH",
    number="INV-2026-0417",
    date="2026-11-03",
    currency="EUR",
    items=(("Printer paper A4", 40, 23_000), ("Toner cartridge", 6, 84_042)),
    vat_percent=20,
)
"""Total due EUR 1,284.50."""

INVOICE_TEXT = """Nordwind Office Supplies GmbH
INVOICE
Invoice number: INV-2026-0417
Invoice date: 3 November 2026
Due date: 03.12.2026
Bill to: Meridian IT Services BV

Printer paper A4 x 40   EUR 230.00
Toner cartridge x 6   EUR 840.42
VAT 20%   EUR 214.08
Total due: EUR 1,284.50
"""
"""The same invoice as typed text (entity extraction reads it without OCR)."""
