"""Short replies to small talk (the router tags it on `TaskAssigned.small_talk`): no knowledge search, no LLM."""

from __future__ import annotations

from collections.abc import Iterable

BACKEND = "smalltalk"
"""`AnswerProduced.backend` of these replies (no tokens: nothing was generated)."""

_REPLIES = {
    "greeting": "Hello! What can I help you with?",
    "wellbeing": "I'm doing well, thanks for asking. What can I help you with?",
    "thanks": "You're welcome! Anything else I can help with?",
    "farewell": "Goodbye! Come back any time.",
    "ack": "Glad to help. Anything else?",
}


def reply(kind: str, agents: Iterable[str]) -> str:
    if kind == "identity":
        names = ", ".join(sorted(agents))
        return (
            "I'm Smolit: I pass your question to the agent that knows its field best "
            f"({names}), and it answers from its knowledge base with sources."
        )
    return _REPLIES.get(kind, _REPLIES["ack"])
