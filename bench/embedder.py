"""Benchmark of the offline embedder: batch-1 query latency and batched throughput per variant and thread count.

Run from the repository root: `python bench/embedder.py` (options: `--help`). Prints one JSON object.
Texts are generated deterministically from templates so runs are comparable across machines:
queries are short questions (~15 tokens), sentences are short knowledge-base paragraphs (~60 tokens) and
passages are ingestion-sized chunks (~150 tokens, like a 660-character `chunk_text` chunk of FiQA prose).
Each variant is built (or loaded from the cache) before timing; the build time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import onnxruntime

from smolit.infra.embedder import OnnxMiniLMEmbedder

_TOPICS = [
    "quarterly revenue",
    "blood pressure",
    "password reset",
    "interest rates",
    "kidney function",
    "refund policy",
    "bond yields",
    "vaccination schedule",
    "shipping delays",
    "tax deductions",
    "heart rhythm",
    "server outage",
    "mortgage terms",
    "allergy symptoms",
    "invoice disputes",
]
_QUESTIONS = [
    "What should I know about {t}?",
    "How does {t} affect my account this year?",
    "Can you explain the latest changes to {t} in simple terms?",
    "Who is responsible for {t} and where can I read more?",
]
_SENTENCES = [
    "The report on {t} was published after a long review by the committee.",
    "Customers often ask about {t} when they first join the service.",
    "Experts recommend checking {t} at least twice a year, especially after major changes.",
    "Our records show that {t} improved steadily over the last three quarters.",
    "If {t} looks unusual, contact the support team with your reference number.",
    "Independent auditors compared {t} across regions and found large, unexplained differences.",
    "A short guide explains {t}, lists the documents you need and the usual processing times.",
]
_PASSAGE_CHARS = 760


def _queries(n: int, rng: random.Random) -> list[str]:
    return [rng.choice(_QUESTIONS).format(t=rng.choice(_TOPICS)) for _ in range(n)]


def _sentences(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(_SENTENCES).format(t=rng.choice(_TOPICS)) for _ in range(3)) for _ in range(n)]


def _passages(n: int, rng: random.Random) -> list[str]:
    passages = []
    for _ in range(n):
        text = ""
        while len(text) < _PASSAGE_CHARS:
            text += rng.choice(_SENTENCES).format(t=rng.choice(_TOPICS)) + " "
        passages.append(text.strip())
    return passages


def _mean_tokens(embedder: OnnxMiniLMEmbedder, texts: list[str]) -> float:
    return statistics.fmean(sum(e.attention_mask) for e in embedder._tokenizer.encode_batch(texts))


def _throughput(embedder: OnnxMiniLMEmbedder, texts: list[str]) -> float:
    start = time.perf_counter()
    embedder.embed(texts)
    return round(len(texts) / (time.perf_counter() - start), 1)


def bench(
    variant: str, threads: int, texts: dict[str, list[str]], batch_size: int, cache_dir: Path | None
) -> dict[str, object]:
    """Latency of one-text calls and throughput of batched calls for one variant and thread count."""
    embedder = OnnxMiniLMEmbedder(threads=threads, batch_size=batch_size, variant=variant, cache_dir=cache_dir)  # type: ignore[arg-type]
    queries = texts["queries"]
    embedder.embed(queries[:8])  # warm-up: first run allocates arenas and picks kernels
    embedder.embed(texts["passages"][:batch_size])

    latencies = []
    for query in queries:
        start = time.perf_counter()
        embedder.embed([query])
        latencies.append((time.perf_counter() - start) * 1000.0)
    latencies.sort()
    return {
        "variant_used": embedder.variant,
        "query_latency_ms_p50": round(statistics.median(latencies), 3),
        "query_latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "queries_per_s_batched": _throughput(embedder, queries),
        "sentences_per_s": _throughput(embedder, texts["sentences"]),
        "passages_per_s": _throughput(embedder, texts["passages"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=["quantized", "shipped"], choices=["quantized", "fp32", "shipped"]
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--queries", type=int, default=200, help="batch-1 calls for the latency numbers")
    parser.add_argument("--sentences", type=int, default=512, help="~60-token texts for a throughput number")
    parser.add_argument("--passages", type=int, default=256, help="~150-token chunks for the ingestion throughput")
    parser.add_argument("--batch-size", type=int, default=64, help="most texts per model call")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="built-model cache (default ~/.cache/smolit/models)"
    )
    args = parser.parse_args()

    rng = random.Random(42)
    texts = {
        "queries": _queries(args.queries, rng),
        "sentences": _sentences(args.sentences, rng),
        "passages": _passages(args.passages, rng),
    }
    results: dict[str, object] = {}
    for variant in args.variants:
        start = time.perf_counter()  # builds the model on a cold cache, else just loads it
        probe = OnnxMiniLMEmbedder(variant=variant, cache_dir=args.cache_dir)  # type: ignore[arg-type]
        per_variant: dict[str, object] = {
            "variant_used": probe.variant,
            "first_load_s": round(time.perf_counter() - start, 2),
        }
        per_variant |= {f"threads_{t}": bench(variant, t, texts, args.batch_size, args.cache_dir) for t in args.threads}
        results[variant] = per_variant
    probe = OnnxMiniLMEmbedder(variant="shipped")
    print(
        json.dumps(
            {
                "model": probe.name,
                "dim": probe.dim,
                "max_length": probe.max_length,
                "batch_size": args.batch_size,
                "max_batch_tokens_per_thread": probe.max_batch_tokens,
                "queries": args.queries,
                "sentences": args.sentences,
                "passages": args.passages,
                "mean_tokens_query": round(_mean_tokens(probe, texts["queries"]), 1),
                "mean_tokens_sentence": round(_mean_tokens(probe, texts["sentences"]), 1),
                "mean_tokens_passage": round(_mean_tokens(probe, texts["passages"]), 1),
                "onnxruntime": onnxruntime.__version__,
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
