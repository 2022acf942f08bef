"""Names for proposed agents from the configured LLM (`SMOLIT_DISCOVERY_NAMING`); the top terms stay otherwise.

The cluster was judged a new domain by its embeddings; the LLM only words it: a name, a one-sentence description and
a system prompt, from the cluster's example requests and top terms. Its reply must be one JSON object that passes
the checks below; anything else (an error, a timeout, prose, a bad name) keeps the term-based proposal and says why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from smolit.infra.llm import Completion, LLMError

from .discovery import NewDomain, unique_name

log = structlog.get_logger("smolit.learner.naming")

INSTRUCTIONS = (
    "You name new specialist agents of a question-answering service. Given example requests that no existing agent "
    "covers, reply with one JSON object and nothing else: "
    '{"name": "<1-3 lowercase words joined by hyphens, the domain>", '
    '"description": "<one sentence: which questions this agent answers>", '
    '"system_prompt": "<2-4 sentences instructing the agent, in the second person>"}.'
)
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+){0,3}$")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class Chat(Protocol):
    def chat(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float = 0.0) -> Completion: ...


class NamingRejected(ValueError):
    """The LLM's reply is not a usable name and description."""


def parse_naming(text: str) -> tuple[str, str, str | None]:
    """(name, description, system prompt or None) from the LLM's reply, or `NamingRejected` with the reason."""
    try:
        reply = json.loads(_FENCE.sub("", text.strip()))
    except json.JSONDecodeError as exc:
        raise NamingRejected(f"not JSON: {exc.msg}") from exc
    if not isinstance(reply, dict):
        raise NamingRejected("not a JSON object")
    name, description, prompt = reply.get("name"), reply.get("description"), reply.get("system_prompt")
    if not isinstance(name, str) or not _NAME.match(name.strip().lower()) or len(name.strip()) > 40:
        raise NamingRejected(f"name {name!r} is not 1-4 lowercase words joined by hyphens (at most 40 characters)")
    if not isinstance(description, str) or not 10 <= len(description.strip()) <= 300:
        raise NamingRejected("description missing or not 10-300 characters")
    if prompt is not None and (not isinstance(prompt, str) or not 20 <= len(prompt.strip()) <= 2000):
        raise NamingRejected("system_prompt not 20-2000 characters")
    return name.strip().lower(), description.strip(), prompt.strip() if isinstance(prompt, str) else None


class LLMNamer:
    """Renames a `NewDomain` with the LLM's words; keeps it as it is when the LLM fails or answers badly."""

    def __init__(self, chat: Chat, max_tokens: int = 400) -> None:
        self._chat = chat
        self._max_tokens = max_tokens

    def __call__(self, domain: NewDomain, taken: set[str]) -> NewDomain:
        shown = "\n".join(f"- {e}" for e in domain.examples[:12])
        messages = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": f"Top terms: {', '.join(domain.terms)}\nExample requests:\n{shown}"},
        ]
        try:
            completion = self._chat.chat(messages, max_tokens=self._max_tokens)
            name, description, prompt = parse_naming(completion.text)
        except (LLMError, NamingRejected) as exc:
            log.warning("LLM naming failed; the top terms name the proposal", terms=domain.terms, reason=str(exc))
            return domain
        name = unique_name(name, taken - {domain.name})
        if prompt is None:
            prompt = domain.system_prompt.replace(f"Smolit's {domain.name} agent", f"Smolit's {name} agent", 1)
        return replace(
            domain, name=name, description=description, system_prompt=prompt, named_by=f"llm:{completion.model}"
        )
