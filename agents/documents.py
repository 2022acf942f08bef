"""Readers for the files `smolit ingest` accepts: text/markdown, HTML, PDF and JSONL (one document per line), and
with the `ocr` step images and scanned PDF pages.

Every reader yields raw documents or, for anything it cannot use, a `FileError` naming the file (and line) and
the reason, so one bad file never stops an ingest of many.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ingest import TEXT_SUFFIXES, FileError, RawDocument
from .ocr import IMAGE_SUFFIXES, OcrFailed, OcrStep

if TYPE_CHECKING:
    from PIL.Image import Image

HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
PDF_SUFFIXES = frozenset({".pdf"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | JSONL_SUFFIXES
NEEDS_OCR = "needs the `ocr` ingest step (agent card: `pipeline: {ingest: [ocr]}`)"


@dataclass(frozen=True)
class JsonlFields:
    """Which JSONL fields hold a record's text, title and stable source id."""

    text: str = "text"
    title: str | None = "title"
    source: str | None = "source"


class _HtmlText(HTMLParser):
    """Visible text of an HTML page, paragraphs kept apart; script/style contents dropped."""

    _HIDDEN = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "pre"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "dd", "dt", "main", "nav", "aside", "hr"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._HIDDEN:
            self._hidden += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
        elif not self._hidden:
            self.parts.append(data)


def parse_html(markup: str) -> tuple[str | None, str]:
    """(title, visible text) of an HTML document; paragraphs separated by blank lines."""
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    paragraphs: list[str] = []
    for line in lines:
        if line:
            paragraphs.append(line)
        elif paragraphs and paragraphs[-1]:
            paragraphs.append("")
    title = " ".join("".join(parser.title_parts).split()) or None
    return title, "\n".join(paragraphs).strip()


class UnreadableDocument(ValueError):
    """A file whose format we support but whose content cannot be read."""


def parse_pdf(path: Path, ocr: OcrStep | None = None) -> tuple[str | None, str]:
    """(title, text) of a PDF; pages separated by blank lines. Raises UnreadableDocument."""
    title, text, _ = read_pdf(path, ocr)
    return title, text


def read_pdf(path: Path, ocr: OcrStep | None = None) -> tuple[str | None, str, dict[str, Any] | None]:
    """(title, text, OCR metadata) of a PDF. Pages without a text layer are read by `ocr` from their embedded
    images when it is given; without it a PDF with no text at all is unreadable. Raises UnreadableDocument."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument("encrypted PDF (a password is needed)")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        scans: dict[int, list[Image]] = {}
        for i, page_text in enumerate(pages):
            if ocr is None or page_text:
                continue
            try:
                scans[i] = [img.image for img in reader.pages[i].images if img.image is not None]
            except Exception as exc:  # pypdf decoders (CCITT, JBIG2, odd colour spaces) raise many kinds
                raise UnreadableDocument(
                    f"scanned PDF: cannot decode the image on page {i + 1} ({type(exc).__name__}: {exc})"
                ) from exc
        title = reader.metadata.title if reader.metadata else None
    except UnreadableDocument:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnreadableDocument(f"unreadable PDF ({type(exc).__name__}: {exc})") from exc
    meta = None
    if ocr is not None and (scanned := {i: imgs for i, imgs in scans.items() if imgs}):
        numbers = sorted(i + 1 for i in scanned)
        try:  # one OCR call per file, so the plausibility check sees all scanned pages together
            read = ocr.read_images([img for imgs in scanned.values() for img in imgs], "pdf-page", path.name)
        except OcrFailed as exc:
            if not any(pages):
                raise UnreadableDocument(f"scanned PDF: {exc}") from exc
            read = None  # the text pages stand on their own; the failed OCR is recorded, not fatal
            meta = {"model": ocr.model, "pages": numbers, "error": str(exc)}
        if read is not None:
            texts = iter(read.per_image)
            for i, images in scanned.items():
                pages[i] = "\n".join(next(texts) for _ in images).strip()
            meta = read.metadata(ocr.model) | {"pages": numbers}
    text = "\n\n".join(p for p in pages if p)
    if not text:
        hint = "no page has an image to OCR" if ocr is not None else f"scanned pages: the PDF {NEEDS_OCR}"
        raise UnreadableDocument(f"no extractable text in {len(pages)} page(s) ({hint})")
    return (str(title).strip() or None) if title else None, text, meta


def read_image(path: Path, ocr: OcrStep) -> tuple[str, dict[str, Any]]:
    """(text, OCR metadata) of an image file; every frame of a multi-page TIFF. Raises UnreadableDocument."""
    from PIL import Image as PILImage
    from PIL import ImageSequence, UnidentifiedImageError

    try:
        with PILImage.open(path) as image:
            frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableDocument(f"unreadable image ({type(exc).__name__}: {exc})") from exc
    try:
        read = ocr.read_images(frames, path.suffix.lstrip(".").lower(), path.name)
    except OcrFailed as exc:
        raise UnreadableDocument(str(exc)) from exc
    return read.text, read.metadata(ocr.model)


def _first_line_title(text: str, fallback: str) -> str:
    line = next((line.lstrip("# ").strip() for line in text.splitlines() if line.strip()), fallback)
    return line[:200]


def _read_text(file: Path) -> str:
    raw = file.read_bytes()
    if b"\x00" in raw[:4096]:
        raise UnreadableDocument("binary content in a text file")
    return raw.decode("utf-8", errors="replace")


def read_file(
    file: Path, fields: JsonlFields = JsonlFields(), ocr: OcrStep | None = None
) -> Iterator[RawDocument | FileError]:
    """The document(s) in one file, or FileErrors saying why not. Images need `ocr`."""
    suffix = file.suffix.lower()
    source = str(file.resolve())
    meta: dict[str, Any] = {"path": str(file), "format": suffix.lstrip(".")}
    try:
        if suffix in JSONL_SUFFIXES:
            yield from _read_jsonl(file, fields)
            return
        if suffix in PDF_SUFFIXES:
            title, text, ocr_meta = read_pdf(file, ocr)
            if ocr_meta:
                meta["ocr"] = ocr_meta
        elif suffix in HTML_SUFFIXES:
            title, text = parse_html(_read_text(file))
        elif suffix in TEXT_SUFFIXES:
            title, text = None, _read_text(file)
        elif suffix in IMAGE_SUFFIXES and ocr is not None:
            text, meta["ocr"] = read_image(file, ocr)
            title = None
        elif suffix in IMAGE_SUFFIXES:
            yield FileError(source, f"unsupported image: {NEEDS_OCR}")
            return
        else:
            kinds = ", ".join(sorted(SUPPORTED_SUFFIXES | IMAGE_SUFFIXES))
            yield FileError(
                source, f"unsupported file type {suffix or '(none)'!r}; supported: {kinds} (images need OCR)"
            )
            return
    except UnreadableDocument as exc:
        yield FileError(source, str(exc))
        return
    except OSError as exc:
        yield FileError(source, f"cannot read file: {exc.strerror or exc}")
        return
    if not text.strip():
        yield FileError(source, "empty document (no text)")
        return
    yield RawDocument(source=source, text=text, title=title or _first_line_title(text, file.stem), metadata=meta)


def _read_jsonl(file: Path, fields: JsonlFields) -> Iterator[RawDocument | FileError]:
    records = 0
    with file.open(encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            records += 1
            where = f"{file.resolve()}#L{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield FileError(where, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(row, dict):
                yield FileError(where, "a JSONL line must be an object")
                continue
            text = row.get(fields.text)
            if not isinstance(text, str) or not text.strip():
                yield FileError(where, f"no text in field {fields.text!r} (choose it with --text-field)")
                continue
            title = row.get(fields.title) if fields.title else None
            source = row.get(fields.source) if fields.source else None
            yield RawDocument(
                source=str(source) if source not in (None, "") else where,
                text=text,
                title=str(title)[:200] if title not in (None, "") else _first_line_title(text, file.stem),
                metadata={"path": str(file), "format": "jsonl", "line": line_no},
            )
    if records == 0:
        yield FileError(str(file.resolve()), "empty JSONL file (no records)")


def read_documents(
    paths: Iterable[Path], fields: JsonlFields = JsonlFields(), ocr: OcrStep | None = None
) -> Iterator[RawDocument | FileError]:
    """Documents from files and folders (walked recursively, sorted; hidden files ignored).

    A file named explicitly with an unsupported type is an error; inside a folder it is reported as skipped.
    Images are supported when `ocr` is given (the agent's pipeline has the `ocr` step).
    """
    supported = SUPPORTED_SUFFIXES | (IMAGE_SUFFIXES if ocr is not None else frozenset())
    for path in paths:
        if path.is_file():
            yield from read_file(path, fields, ocr)
            continue
        if not path.is_dir():
            yield FileError(str(path), "no such file or folder")
            continue
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        for file in files:
            suffix = file.suffix.lower()
            if suffix in supported:
                yield from read_file(file, fields, ocr)
            elif suffix in IMAGE_SUFFIXES:
                yield FileError(str(file.resolve()), f"skipped: unsupported image: {NEEDS_OCR}", True)
            else:
                yield FileError(
                    str(file.resolve()), f"skipped: unsupported file type {file.suffix or '(none)'!r}", True
                )
