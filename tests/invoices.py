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
