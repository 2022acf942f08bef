"""`smolit stats`: the latest metrics window per agent and window length, read from the agent-metrics topic."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from rich import box
from rich.table import Column, Table

from smolit.contracts import AgentMetricsWindow, Event, Lifecycle, Topic, TopicNames
from smolit.infra.agent_gauges import window_kind
from smolit.infra.kafka import KafkaProfile, read_topic_events

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `1d` (ago) or an ISO-8601 time (UTC when no zone is given)."""
    if match := _DURATION.match(text.strip()):
        return (now or datetime.now(UTC)) - timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--since takes a duration like 30m, 2h, 1d or an ISO time, not {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_windows(events: Iterable[Event]) -> list[AgentMetricsWindow]:
    """Last value per (agent, window length): the window that ends latest, the most recent emission on a tie."""
    latest: dict[tuple[str, str], AgentMetricsWindow] = {}
    for event in events:
        if not isinstance(event, AgentMetricsWindow):
            continue
        key = (event.agent, window_kind(event))
        seen = latest.get(key)
        if seen is None or (event.window_end, event.occurred_at) >= (seen.window_end, seen.occurred_at):
            latest[key] = event
    return sorted(latest.values(), key=lambda w: (w.agent, (w.window_end - w.window_start), w.window_end))


def flagged_agents(events: Iterable[Event]) -> dict[str, str]:
    """Flagged agents with the flag's reason (an unflag, re-creation or retirement clears a flag; see Lifecycle)."""
    return {agent: flag.reason for agent, flag in Lifecycle.of(events).flags.items()}


def collect_stats(
    profile: KafkaProfile, topics: TopicNames, since: datetime | None = None, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """One row per agent and window length, from the agent-metrics and agent-lifecycle topics."""
    consumer = profile.consumer("stats")
    windows = latest_windows(
        e
        for e in read_topic_events(consumer, topics(Topic.AGENT_METRICS), since, timeout_s)
        # Brokers that cannot look offsets up by time hand back older records too.
        if since is None or e.occurred_at >= since
    )
    flags = flagged_agents(read_topic_events(consumer, topics(Topic.AGENT_LIFECYCLE), None, timeout_s))
    return [_row(w, flags.get(w.agent)) for w in windows]


def _row(w: AgentMetricsWindow, flag: str | None) -> dict[str, Any]:
    return {
        "agent": w.agent,
        "window": window_kind(w),
        "window_start": w.window_start.isoformat(),
        "window_end": w.window_end.isoformat(),
        "requests": w.requests,
        "answers": w.answers,
        "failures": w.failures,
        "failure_rate": round(w.failures / (w.answers + w.failures), 4) if w.answers + w.failures else None,
        "latency_p50_ms": w.latency_p50_ms,
        "latency_p95_ms": w.latency_p95_ms,
        "latency_p99_ms": w.latency_p99_ms,
        "feedback_count": w.feedback_count,
        "mean_rating": w.mean_rating,
        "negative_rate": w.negative_rate,
        "tokens": w.tokens,
        "cost_usd": w.cost_usd,
        "cache_hits": w.cache_hits,
        "subqueries_sent": w.subqueries_sent,
        "subqueries_received": w.subqueries_received,
        "mean_routing_score": w.mean_routing_score,
        "flagged": flag,
    }


def stats_table(rows: list[dict[str, Any]]) -> Table:
    """Compact enough for an 80-column terminal; `--json` has every field."""
    table = Table(
        Column("agent", no_wrap=True, min_width=7),
        Column("win", no_wrap=True),
        Column("req", justify="right"),
        Column("fail", justify="right"),
        Column("p50ms", justify="right"),
        Column("p95ms", justify="right"),
        Column("fb", justify="right"),
        Column("rating", justify="right"),
        Column("neg", justify="right"),
        Column("cost$", justify="right"),
        Column("route", justify="right"),
        Column("flag", no_wrap=True),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title="latest window per agent and length",
    )
    for r in rows:
        table.add_row(
            r["agent"],
            r["window"],
            str(r["requests"]),
            f"[red]{r['failures']}[/]" if r["failures"] else "0",
            _num(r["latency_p50_ms"], 0),
            _num(r["latency_p95_ms"], 0),
            str(r["feedback_count"]),
            _num(r["mean_rating"], 2),
            _pct(r["negative_rate"]),
            f"{r['cost_usd']:.3g}",
            _num(r["mean_routing_score"], 2),
            "[yellow]⚑[/]" if r["flagged"] else "",
        )
    return table


def flag_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One line per flagged agent with the reason (too long for a table cell)."""
    reasons = {r["agent"]: r["flagged"] for r in rows if r["flagged"]}
    return [f"⚑ {agent}: {reason}" for agent, reason in sorted(reasons.items())]


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
