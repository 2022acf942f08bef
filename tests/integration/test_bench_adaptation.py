"""`smolit bench adaptation` end to end on a tiny generated set: a fresh embedded system, real services, one JSON."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from smolit.cli import app

# Small generated domains: distinct vocabularies, so that routing and the answers' sources can be judged.
TEMPLATES = {
    "finance": (
        ["How do I", "Should I", "When is it wise to", "What does it cost to"],
        [
            "refinance my mortgage",
            "invest in index funds",
            "pay off my credit card debt",
            "open a Roth IRA",
            "buy government bonds",
            "file my income tax return",
            "save for retirement",
            "rebalance my stock portfolio",
        ],
    ),
    "legal": (
        ["Can my landlord", "Is it legal for my employer to", "May the other party", "Does the contract allow them to"],
        [
            "terminate the lease without notice",
            "share my personal data with third parties",
            "enforce a non-compete clause",
            "keep my security deposit",
            "change the terms of service unilaterally",
            "sue me for breach of contract",
            "record my phone calls",
            "withhold my final paycheck",
        ],
    ),
    "general": (
        ["Who was", "In which year did", "Where was", "Which film starred"],
        [
            "the first person on the moon",
            "the Eiffel Tower built",
            "the 1998 football world cup won",
            "the author of Moby Dick",
            "the Great Wall of China started",
            "the first Olympic games held",
            "the Beatles' drummer",
            "the tallest mountain in Europe",
        ],
    ),
    "cooking": (
        ["How long should I", "What temperature do I need to", "Can I", "What is the best way to"],
        [
            "bake sourdough bread",
            "roast a whole chicken",
            "caramelise onions for soup",
            "knead pizza dough",
            "poach eggs for brunch",
            "simmer tomato sauce for pasta",
            "braise beef short ribs",
            "whisk a meringue",
        ],
    ),
}


def _rows(domain: str, seed: int) -> list[dict[str, str]]:
    heads, tails = TEMPLATES[domain]
    texts = [f"{h} {t}?" for h, t in itertools.product(heads, tails)]
    random.Random(seed).shuffle(texts)
    return [{"text": t, "domain": domain} for t in texts]


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_adaptation_bench_runs_the_pipeline_and_keeps_its_json_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 rows per domain through a fresh system: every request is answered and judged, the bad version reaches the
    lifecycle topic, and stdout is exactly one JSON object with the contract's keys and sane values."""
    # Small numbers for a small run: the services read these from the environment the bench passes on.
    monkeypatch.setenv("SMOLIT_DISCOVERY_MIN_SIZE", "8")
    monkeypatch.setenv("SMOLIT_FLAG_MIN_SAMPLES", "6")
    train, test = [], []
    for seed, domain in enumerate(TEMPLATES):
        rows = _rows(domain, seed)
        train += rows[:26]
        test += rows[26:]
    train_path, test_path = _write(tmp_path / "train.jsonl", train), _write(tmp_path / "test.jsonl", test)

    result = CliRunner().invoke(
        app,
        [
            *("bench", "adaptation", "--train", str(train_path), "--test", str(test_path)),
            *("--initial-domains", "finance,legal,general", "--new-domain", "cooking", "--bad-agent", "legal"),
            *("--knowledge-rows", "10", "--warmup", "10", "--bad-at", "0.3", "--concurrency", "4", "--json"),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the whole of stdout is one JSON object
    contract = {
        "new_agent_created_after_requests": (int, type(None)),
        "new_agent_count": int,
        "new_domain_accuracy": float,
        "flag_latency_feedback": (int, type(None)),
        "false_flags": int,
        "recovered": bool,
        "wall_s": float,
    }
    for key, types in contract.items():
        assert isinstance(report[key], types), (key, report[key])
    assert report["answered"] == report["stream_requests"] > 0, "every request went through the pipeline"
    assert report["feedback_events"] == report["answered"]
    assert report["new_domain_stream"]["requests"] > 0
    assert 0.0 <= report["new_domain_accuracy"] <= 1.0
    assert report["new_agent_count"] == len(report["created_agents"]) >= 0
    if report["new_agent_created_after_requests"] is not None:
        assert 1 <= report["new_agent_created_after_requests"] <= report["new_domain_stream"]["requests"]
    assert report["false_flags"] == len(report["falsely_flagged_agents"])
    bad = {"type": "AgentUpdated", "agent": "legal", "producer": "bench", "version": 2, "collection": "finance"}
    assert bad in report["lifecycle"], "the bad version was published on the lifecycle topic"
    # The knowledge is the domains' own questions: before the bad version, legal answers cite legal documents.
    assert report["bad_agent_domain_good_rate_before"] >= 0.6
    assert report["wall_s"] > 0


def test_adaptation_bench_refuses_a_bad_agent_outside_the_initial_domains(tmp_path: Path) -> None:
    """A bad agent that is not an initial domain is a usage error (exit 2) before anything starts."""
    rows = _write(tmp_path / "rows.jsonl", _rows("finance", 0) + _rows("legal", 1) + _rows("cooking", 2))
    result = CliRunner().invoke(
        app,
        [
            *("bench", "adaptation", "--train", str(rows), "--test", str(rows), "--json"),
            *("--initial-domains", "finance,legal", "--new-domain", "cooking", "--bad-agent", "cooking"),
        ],
    )
    assert result.exit_code == 2
    assert "not one of the initial domains" in result.output
