"""Document readers: HTML, PDF, JSONL and folder walking, with per-file errors instead of exceptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pypdf import PdfWriter

from smolit.agents import FileError, JsonlFields, RawDocument, parse_html, parse_pdf, read_documents
from smolit.agents.documents import UnreadableDocument

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_html_keeps_visible_text_in_paragraphs_and_the_title() -> None:
    """Scripts, styles and the head are dropped, entities decoded, block elements become paragraphs."""
    title, text = parse_html(
        "<html><head><title> Cheque  rules </title><style>p{color:red}</style></head><body>"
        "<h1>Deposits</h1><p>Pay cheques into the <b>business</b> account &amp; keep the slip.</p>"
        "<script>alert('x')</script><ul><li>One</li><li>Two</li></ul></body></html>"
    )
    assert title == "Cheque rules"
    assert text.split("\n\n") == ["Deposits", "Pay cheques into the business account & keep the slip.", "One", "Two"]
    assert "alert" not in text and "color" not in text


def test_pdf_text_and_title_are_extracted_page_by_page() -> None:
    """The fixture PDF (written with pypdf) yields its metadata title and both pages' text."""
    title, text = parse_pdf(FIXTURES / "cheques.pdf")
    assert title == "Cheque deposits"
    pages = text.split("\n\n")
    assert len(pages) == 2
    assert "paid into the business account" in pages[0]
    assert pages[1] == "Page two: cheques expire after six months."


def test_pdf_without_text_or_not_a_pdf_is_unreadable(tmp_path: Path) -> None:
    """A PDF of blank (image-only) pages and a file that is not a PDF both raise UnreadableDocument."""
    blank = tmp_path / "scan.pdf"
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.write(blank)
    with pytest.raises(UnreadableDocument, match="no extractable text"):
        parse_pdf(blank)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"this is not a pdf at all")
    with pytest.raises(UnreadableDocument, match="unreadable PDF"):
        parse_pdf(broken)


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_records_become_documents_and_bad_lines_become_errors(tmp_path: Path) -> None:
    """Each line is a document with its title and source fields; bad JSON and missing text are per-line errors."""
    file = _write_jsonl(
        tmp_path / "kb.jsonl",
        [
            {"body": "Index funds track a market index at low cost.", "name": "Index funds", "id": "faq-1"},
            "{not json",
            {"name": "no text here"},
            {"body": "Bonds pay fixed interest until they mature."},
        ],
    )
    items = list(read_documents([file], JsonlFields(text="body", title="name", source="id")))
    docs = [i for i in items if isinstance(i, RawDocument)]
    errors = [i for i in items if isinstance(i, FileError)]
    assert [(d.source, d.title) for d in docs] == [
        ("faq-1", "Index funds"),
        (f"{file.resolve()}#L4", "Bonds pay fixed interest until they mature."),
    ]
    assert docs[1].metadata == {"path": str(file), "format": "jsonl", "line": 4}
    assert [e.source.rsplit("#", 1)[1] for e in errors] == ["L2", "L3"]
    assert "invalid JSON" in errors[0].reason
    assert "'body'" in errors[1].reason and not errors[1].skipped


def test_folders_are_walked_with_clear_errors(tmp_path: Path) -> None:
    """A folder yields every supported file; unsupported ones are skipped, empty ones fail, hidden ones are ignored."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# Title A\n\nSome text.")
    (tmp_path / "sub" / "b.html").write_text("<p>Hello from HTML.</p>")
    (tmp_path / "c.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / ".hidden.txt").write_text("secret")
    items = list(read_documents([tmp_path, tmp_path / "missing.txt"]))
    by_name = {Path(i.source).name: i for i in items}
    assert set(by_name) == {"a.md", "b.html", "c.png", "empty.txt", "missing.txt"}
    assert isinstance(by_name["a.md"], RawDocument) and by_name["a.md"].title == "Title A"
    assert isinstance(by_name["b.html"], RawDocument) and by_name["b.html"].text == "Hello from HTML."
    png, empty, missing = by_name["c.png"], by_name["empty.txt"], by_name["missing.txt"]
    assert isinstance(png, FileError) and png.skipped and "unsupported" in png.reason
    assert isinstance(empty, FileError) and not empty.skipped and "empty" in empty.reason
    assert isinstance(missing, FileError) and "no such file" in missing.reason


def test_an_unsupported_file_named_explicitly_is_a_failure(tmp_path: Path) -> None:
    """Naming a .docx directly is an error (not a silent skip) that lists the supported types."""
    file = tmp_path / "report.docx"
    file.write_bytes(b"PK\x03\x04")
    (item,) = read_documents([file])
    assert isinstance(item, FileError) and not item.skipped
    assert ".pdf" in item.reason and ".docx" in item.reason
