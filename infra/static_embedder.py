"""A static (lookup-table) approximation of all-MiniLM-L6-v2, distilled once from the shipped model.

Used as the prompt filter's cheap first stage: tokenise, average one table row per WordPiece token, normalise.
~0.1 ms per short text and no ONNX call, against ~3-10 ms (load-dependent) for one MiniLM encode.

Built (model2vec-style, nothing downloaded) from the running `OnnxMiniLMEmbedder`:
1. each vocabulary token is encoded alone as `[CLS] tok [SEP]`; its own output state is its row;
2. rows are centred and the first principal component is removed (it carries little but frequency and would
   dominate every average);
3. a ridge regression maps averaged rows to the real MiniLM sentence vectors of `_FIT_SENTENCES` random
   bag-of-words texts (seeded) plus `extra_texts` (the filter's patterns), so scores land in MiniLM's scale; the
   map is folded into the table (384 floats per token, 47 MB).
The result is cached next to the fused graphs (`<cache_dir>/minilm-static-<key>.npz`) under a file lock.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from .minilm_build import _exclusive_lock, _write_atomically, cached_model_path

log = structlog.get_logger("smolit.embedder")

_RECIPE = 3
"""Bump when the build below changes what it produces (part of the cache key)."""
_FIT_SENTENCES = 3000
_FIT_SEED = 0
_RIDGE = 1.0
_CLS, _SEP, _UNK = 101, 102, 100
_FIRST_WORD_ID = 1996  # BERT uncased vocab: ids below are [unused], punctuation and single characters


class TokenStates(Protocol):
    """What the build needs from the ONNX embedder: last hidden states of padded id batches, and sentence vectors."""

    def token_states(self, ids: list[list[int]]) -> np.ndarray: ...

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray: ...


class StaticEmbedder:
    """Mean of per-token rows (times `projection`, if any), L2-normalised. Pure given its arrays and `tokenize`."""

    def __init__(
        self, table: np.ndarray, tokenize: Callable[[str], list[int]], projection: np.ndarray | None = None
    ) -> None:
        if table.ndim != 2 or (projection is not None and projection.shape[0] != table.shape[1]):
            raise ValueError(f"table {table.shape} and projection {getattr(projection, 'shape', None)} do not fit")
        self.table = table.astype(np.float32, copy=False)
        self.projection = None if projection is None else projection.astype(np.float32, copy=False)
        self.dim = table.shape[1] if projection is None else projection.shape[1]
        self._size = len(table)
        self._tokenize = tokenize

    def mean_rows(self, ids: Sequence[int]) -> np.ndarray:
        """Average of the rows of `ids` (unknown ids skipped; the unknown token's row when none is left), before
        the projection. Its length does not matter: the sentence vector is normalised after the projection."""
        if not ids or max(ids) >= self._size or min(ids) < 0:
            ids = [i for i in ids if 0 <= i < self._size] or [_UNK]
        return self.table[ids].mean(axis=0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = np.stack([self.mean_rows(self._tokenize(t)) for t in texts])
        if self.projection is not None:
            rows = rows @ self.projection
        return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_projection(x: np.ndarray, y: np.ndarray, ridge: float = _RIDGE) -> np.ndarray:
    """Ridge regression W minimising |xW - y|^2 + ridge |W|^2 (closed form)."""
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y).astype(np.float32)


def decorrelate(table: np.ndarray, skip: int = _FIRST_WORD_ID) -> np.ndarray:
    """Centre the rows and drop the first principal component (both estimated on rows from `skip` on)."""
    centred = table - table[skip:].mean(axis=0)
    _, _, vt = np.linalg.svd(centred[skip:], full_matrices=False)
    return (centred @ vt[1:].T).astype(np.float32)


def build_static(
    model: TokenStates, vocab: dict[str, int], extra_texts: Sequence[list[int]] = ()
) -> dict[str, np.ndarray]:
    """The table (projection folded in) distilled from `model` (module docstring). `extra_texts`: token ids (without
    [CLS]/[SEP]) of texts whose vectors the projection should reproduce well."""
    size = max(vocab.values()) + 1
    raw = np.zeros((size, model.token_states([[_CLS, _CLS, _SEP]]).shape[-1]), dtype=np.float32)
    for start in range(0, size, 256):
        batch = [[_CLS, i, _SEP] for i in range(start, min(size, start + 256))]
        raw[start : start + len(batch)] = model.token_states(batch)[:, 1]
    table = decorrelate(raw)
    # Sorted: tokenizers' get_vocab() order changes from call to call, and the build must be reproducible.
    words = sorted(i for w, i in vocab.items() if i >= _FIRST_WORD_ID and w.isalpha())
    rng = np.random.default_rng(_FIT_SEED)
    texts = [list(rng.choice(words, size=int(rng.integers(4, 20)))) for _ in range(_FIT_SENTENCES)]
    texts += [list(t) for t in extra_texts]
    batches = [texts[s : s + 64] for s in range(0, len(texts), 64)]
    target = np.vstack([model.embed_ids([[_CLS, *t, _SEP] for t in batch]) for batch in batches])
    tokenless = StaticEmbedder(table, lambda _: [])
    features = np.stack([tokenless.mean_rows(t) for t in texts])
    features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    # mean(rows) @ W == mean(rows @ W): the map is folded into the table, so a lookup needs no matrix product.
    return {"table": (table @ fit_projection(features, target)).astype(np.float32)}


def load_or_build_static(
    model: TokenStates,
    tokenizer: object,
    variant: str,
    extra_texts: Sequence[str] = (),
    cache_dir: Path | None = None,
) -> StaticEmbedder:
    """The cached static model for this MiniLM build and `extra_texts`, built first if missing (minutes on a busy
    2-core machine; once per cache dir)."""

    def tokenize(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids  # type: ignore[attr-defined]

    base = cached_model_path("fp32" if variant == "shipped" else variant, cache_dir)  # type: ignore[arg-type]
    key = hashlib.sha256(f"{_RECIPE}|{variant}|{base.name}|{'|'.join(extra_texts)}".encode()).hexdigest()[:16]
    path = base.with_name(f"minilm-static-{key}.npz")
    if not path.is_file():
        with _exclusive_lock(path.with_name(path.name + ".lock")):
            if not path.is_file():
                log.info("embedder.static_build", path=str(path))
                vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
                arrays = build_static(model, vocab, [tokenize(t) for t in extra_texts])
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                _write_atomically(path, buffer.getvalue())
    with np.load(path) as data:
        return StaticEmbedder(data["table"], tokenize)
