"""Pure subquery logic: clause splitting, whom to consult, how subanswers merge, and the LLM completion cache."""

from __future__ import annotations

import uuid

from smolit.agents import SubqueryPolicy, merge_answers, plan_consults
from smolit.agents.subqueries import SubResult, subanswer_passages
from smolit.contracts import AgentCard, Clause, LLMConfig, Source, SubqueryAnswered
from smolit.infra.llm import Completion, CompletionCache, Passage, cache_key
from smolit.router.clauses import split_clauses

FINANCE = AgentCard(name="finance", description="money", consults=("legal", "health"))
INTEREST = Clause(text="What interest would I pay", embedding="", scores={"finance": 0.6, "legal": 0.2})
CLAUSE = Clause(text="is the late-fee clause enforceable?", embedding="", scores={"finance": 0.2, "legal": 0.5})
POLICY = SubqueryPolicy(max_depth=2, budget=2, consult_threshold=0.35)


def test_compound_requests_split_into_clauses_and_single_questions_do_not() -> None:
    """A second question after ', and' or '?' starts a clause; 'and' inside a noun phrase does not."""
    assert split_clauses("What interest would I pay on a late invoice, and is the late-fee clause enforceable?") == [
        "What interest would I pay on a late invoice",
        "is the late-fee clause enforceable?",
    ]
    assert split_clauses("Should I refinance? Can the lender cancel the contract?") == [
        "Should I refinance?",
        "Can the lender cancel the contract?",
    ]
    assert split_clauses("How do taxes and fees work on index funds?") == []
    assert split_clauses("How are dividends taxed, and why?") == []  # "why?" is too short to score


def test_a_clause_owned_by_a_consultable_agent_is_delegated() -> None:
    """The legal clause goes to legal; the finance clause stays; health owns nothing."""
    plan = plan_consults(FINANCE, [INTEREST, CLAUSE], chain=(), depth=0, budget=2, policy=POLICY)
    assert [(c.agent, c.clause.text) for c in plan] == [("legal", CLAUSE.text)]


def test_no_consult_below_threshold_or_unlisted_or_in_the_chain_or_too_deep() -> None:
    """Threshold, the card's consults list, the chain (no cycles), depth and budget each stop a subquery."""
    weak = Clause(text="is it enforceable", embedding="", scores={"finance": 0.2, "legal": 0.3})
    assert plan_consults(FINANCE, [weak], chain=(), depth=0, budget=2, policy=POLICY) == []
    loner = AgentCard(name="finance", description="money")
    assert plan_consults(loner, [CLAUSE], chain=(), depth=0, budget=2, policy=POLICY) == []
    assert plan_consults(FINANCE, [CLAUSE], chain=("legal",), depth=1, budget=2, policy=POLICY) == []
    assert plan_consults(FINANCE, [CLAUSE], chain=(), depth=2, budget=2, policy=POLICY) == []
    assert plan_consults(FINANCE, [CLAUSE], chain=(), depth=0, budget=0, policy=POLICY) == []


def _source(name: str) -> Source:
    return Source(chunk_id=1, source=name, score=0.5, snippet="…")


def _answered(agent: str, text: str, sources: tuple[Source, ...] = (), error: str | None = None) -> SubqueryAnswered:
    return SubqueryAnswered(
        correlation_id=uuid.uuid4(),
        agent=agent,
        subquery_event_id=uuid.uuid4(),
        answer=text,
        sources=sources,
        latency_ms=1.0,
        error=error,
    )


def test_merge_renumbers_the_subanswer_citations_after_the_own_sources() -> None:
    """Citations of the consulted agent point past the asking agent's sources; sources from both are kept."""
    legal = (_source("l1"), _source("l2"))
    sub = _answered("legal", "Late fees must be reasonable [1]. Penalties are void [2].", legal)
    own = [_source("f1"), _source("f2")]
    text, sources = merge_answers("Interest is 8% a year [1][2].", own, [SubResult("legal", sub)])
    assert text == (
        "Interest is 8% a year [1][2].\n\n"
        "From the legal agent: Late fees must be reasonable [3]. Penalties are void [4]."
    )
    assert [s.source for s in sources] == ["f1", "f2", "l1", "l2"]


def test_missing_and_failed_subanswers_become_notes() -> None:
    """An expired subquery says the agent did not answer in time; a failed one says why."""
    failed = _answered("health", "", error="unknown agent 'health'")
    results = [SubResult("legal", None), SubResult("health", failed)]
    text, sources = merge_answers("Own part [1].", [_source("f1")], results)
    assert "the legal agent did not answer in time" in text
    assert "the health agent could not answer (unknown agent 'health')" in text
    assert [s.source for s in sources] == ["f1"]


def test_subanswer_passages_follow_its_citations() -> None:
    """Each source of a subanswer becomes one passage made of the sentences citing it (its snippet if none do)."""
    sub = _answered("legal", "Fees must be fair. They need notice [1]. Penalties are void. [2]", (_source("l1"),) * 3)
    passages = subanswer_passages(sub)
    assert [p.text for p in passages] == ["Fees must be fair. They need notice", "Penalties are void.", "…"]
    assert [p.source for p in passages] == ["l1", "l1", "l1"]


def test_cache_key_changes_with_prompt_and_parameters_and_the_lru_is_bounded() -> None:
    """Any change of backend, model, prompt, passages or sampling parameters is a different call; old entries go."""
    passages = [Passage("Cheques clear in two days.", "a", None, 0.9)]
    base = cache_key("openai", "m", "q?", passages, LLMConfig())
    assert base == cache_key("openai", "m", "q?", passages, LLMConfig())
    variants = [
        cache_key("extractive", "m", "q?", passages, LLMConfig()),
        cache_key("openai", "n", "q?", passages, LLMConfig()),
        cache_key("openai", "m", "other?", passages, LLMConfig()),
        cache_key("openai", "m", "q?", [], LLMConfig()),
        cache_key("openai", "m", "q?", passages, LLMConfig(temperature=0.9)),
        cache_key("openai", "m", "q?", passages, LLMConfig(system_prompt="Be brief.")),
        cache_key("openai", "m", "q?", passages, LLMConfig(), consultable=("legal",)),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    cache = CompletionCache(2)
    done = Completion("a", "openai", "m", 1, 1, 0.0)
    for key in ("k1", "k2"):
        cache.put(key, done)
    assert cache.get("k1") is done  # k1 is now the most recent
    cache.put("k3", done)
    assert cache.get("k2") is None and cache.get("k1") is done and len(cache) == 2
