"""Benchmark of the offline embedder: batch-1 query latency and batch-64 throughput per thread count.

Run from the repository root: `python bench/embedder.py` (options: `--help`). Prints one JSON object.
Texts are generated deterministically from templates so runs are comparable across machines:
queries are short questions (~15 tokens), passages are knowledge-base style paragraphs (~60 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time

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
]


def _queries(n: int, rng: random.Random) -> list[str]:
    return [rng.choice(_QUESTIONS).format(t=rng.choice(_TOPICS)) for _ in range(n)]


def _passages(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(_SENTENCES).format(t=rng.choice(_TOPICS)) for _ in range(3)) for _ in range(n)]


def _mean_tokens(embedder: OnnxMiniLMEmbedder, texts: list[str]) -> float:
    return statistics.fmean(sum(e.attention_mask) for e in embedder._tokenizer.encode_batch(texts))


def bench(threads: int, queries: list[str], passages: list[str], batch_size: int) -> dict[str, float]:
    """Latency of one-text calls and throughput of batched calls for one thread count."""
    embedder = OnnxMiniLMEmbedder(threads=threads, batch_size=batch_size)
    embedder.embed(queries[:8])  # warm-up: first run allocates arenas and picks kernels
    embedder.embed(passages[:batch_size])

    latencies = []
    for query in queries:
        start = time.perf_counter()
        embedder.embed([query])
        latencies.append((time.perf_counter() - start) * 1000.0)
    latencies.sort()

    start = time.perf_counter()
    embedder.embed(passages)
    elapsed = time.perf_counter() - start
    return {
        "latency_ms_p50": round(statistics.median(latencies), 3),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "throughput_sentences_per_s": round(len(passages) / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="batch-1 calls for the latency numbers")
    parser.add_argument("--passages", type=int, default=1024, help="texts for the throughput number")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    rng = random.Random(42)
    queries, passages = _queries(args.queries, rng), _passages(args.passages, rng)
    results = {f"threads_{t}": bench(t, queries, passages, args.batch_size) for t in args.threads}
    probe = OnnxMiniLMEmbedder()
    print(
        json.dumps(
            {
                "model": probe.name,
                "dim": probe.dim,
                "max_length": probe.max_length,
                "batch_size": args.batch_size,
                "queries": args.queries,
                "passages": args.passages,
                "mean_tokens_query": round(_mean_tokens(probe, queries), 1),
                "mean_tokens_passage": round(_mean_tokens(probe, passages), 1),
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
