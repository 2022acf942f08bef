"""The flag rule alone, simulated (no broker, no pipeline). Prints one JSON object.

Agents take turns producing judged outcomes with fixed negative rates; after each outcome the rule judges the agent
that produced it (as the learner does). Reports, over seeds, after how many of its own outcomes the bad agent was
first flagged and how many good agents were ever flagged.

Usage: python bench/flag_rule.py [--seeds 100] [--outcomes 400] [--bad 0.7] [--good 0.1,0.15,0.2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

from smolit.learner.flags import FlagRule, OutcomeWindows, judge


def run(seeds: int, outcomes: int, bad: float, good: list[float], rule: FlagRule) -> dict[str, object]:
    rates = {"bad": bad} | {f"good{i}": r for i, r in enumerate(good)}
    latencies: list[int] = []
    missed = false_flags = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        windows = OutcomeWindows(rule.window)
        seen = dict.fromkeys(rates, 0)
        flagged: dict[str, int] = {}
        for i in range(outcomes * len(rates)):
            agent = list(rates)[i % len(rates)]
            windows.add(agent, rng.random() < rates[agent])
            seen[agent] += 1
            if agent in flagged:
                continue
            verdict = judge(rule, windows.recent(agent), windows.others(agent), windows.history(agent), flagged=False)
            if verdict.action == "flag":
                flagged[agent] = seen[agent]
        false_flags += sum(1 for a in flagged if a != "bad")
        if "bad" in flagged:
            latencies.append(flagged["bad"])
        else:
            missed += 1
    return {
        "seeds": seeds,
        "outcomes_per_agent": outcomes,
        "bad_rate": bad,
        "good_rates": good,
        "rule": {"min_samples": rule.min_samples, "window": rule.window, "flag_rate": rule.flag_rate, "z": rule.z},
        "flag_latency_median": statistics.median(latencies) if latencies else None,
        "flag_latency_max": max(latencies) if latencies else None,
        "bad_agent_missed": missed,
        "false_flags": false_flags,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--outcomes", type=int, default=400)
    parser.add_argument("--bad", type=float, default=0.7)
    parser.add_argument("--good", default="0.1,0.15,0.2")
    args = parser.parse_args()
    good = [float(r) for r in args.good.split(",")]
    print(json.dumps(run(args.seeds, args.outcomes, args.bad, good, FlagRule())))


if __name__ == "__main__":
    main()
