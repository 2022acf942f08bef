"""Prometheus metrics of the agents service: answers, failures, latency, LLM tokens and cost, cache hits, fallbacks,
subqueries (one set per process registry)."""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram


class AgentMetrics(NamedTuple):
    answers: Counter
    failures: Counter
    answer_seconds: Histogram
    tokens: Counter
    cost: Counter
    cache_hits: Counter
    fallbacks: Counter
    subqueries: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        return cls(
            answers=Counter("smolit_agent_answers_total", "Answers produced", ["agent"], registry=registry),
            failures=Counter("smolit_agent_failures_total", "Tasks failed", ["agent"], registry=registry),
            answer_seconds=Histogram(
                "smolit_agent_answer_seconds",
                "Task receipt to answer",
                ["agent"],
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            ),
            tokens=Counter("smolit_llm_tokens_total", "LLM tokens", ["agent", "kind"], registry=registry),
            cost=Counter("smolit_llm_cost_usd_total", "LLM cost in USD", ["agent"], registry=registry),
            cache_hits=Counter(
                "smolit_llm_cache_hits_total", "LLM calls answered from the cache", ["agent"], registry=registry
            ),
            fallbacks=Counter(
                "smolit_llm_fallbacks_total",
                "Answers written by the fallback backend because the agent's backend was unavailable",
                ["agent", "backend"],
                registry=registry,
            ),
            subqueries=Counter(
                "smolit_agent_subqueries_total",
                "Agent-to-agent subqueries by outcome (sent, answered, failed, expired, received)",
                ["agent", "outcome"],
                registry=registry,
            ),
        )
