"""The LLM port: answer a question from retrieved passages, with citations [n] to those passages.

Two adapters: `ExtractiveLLM` (offline default; no generation, it quotes the passages' most relevant
sentences) and `OpenAILLM` (any OpenAI-compatible chat endpoint: OpenAI, vLLM, Ollama, LM Studio).
Both number passages 1..n in the order given, which callers keep best-first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import openai

from smolit.contracts.agents import LLMConfig
from smolit.infra.settings import Settings


@dataclass(frozen=True)
class Passage:
    """One retrieved knowledge chunk; `score` is its retrieval similarity."""

    text: str
    source: str
    title: str | None
    score: float


@dataclass(frozen=True)
class Completion:
    """An answer and what it cost."""

    text: str
    backend: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    consults: tuple[tuple[str, str], ...] = ()
    """(agent, question) pairs the model asked for with the `consult_agent` tool."""
    tool_calls: tuple[tuple[str, str], ...] = ()
    """(tool name, raw JSON arguments) of calls the model made to the agent's declared tools (see agents.tools)."""


class LLMError(Exception):
    """Any failure of an LLM call; not worth retrying unless `retryable`."""

    retryable: bool = False


class LLMUnavailable(LLMError):
    """The backend is unreachable or overloaded (timeout, connection, 5xx, rate limit after retries)."""

    retryable = True


@runtime_checkable
class LLM(Protocol):
    name: str

    def complete(
        self, question: str, passages: Sequence[Passage], config: LLMConfig, consultable: Sequence[str] = ()
    ) -> Completion:
        """Answer from the passages; backends with tool calling may ask to consult one of `consultable`."""
        ...


def build_prompt(question: str, passages: Sequence[Passage], config: LLMConfig) -> list[dict[str, str]]:
    """Chat messages: the agent's system prompt, then the numbered passages and the question."""
    blocks = []
    for number, passage in enumerate(passages, start=1):
        label = f"source: {passage.source}" + (f", title: {passage.title}" if passage.title else "")
        blocks.append(f"[{number}] ({label})\n{passage.text.strip()}")
    context = "\n\n".join(blocks) if blocks else "(no passages were found)"
    user = (
        f"Passages:\n\n{context}\n\n"
        "Answer using only these passages and cite them as [n]. "
        "If they do not contain the answer, say so.\n\n"
        f"Question: {question.strip()}"
    )
    return [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": user}]


CONSULT_TOOL = "consult_agent"


def consult_tool(agents: Sequence[str]) -> dict[str, Any]:
    """OpenAI tool definition that lets the model ask one of `agents` a question it cannot answer from its passages."""
    return {
        "type": "function",
        "function": {
            "name": CONSULT_TOOL,
            "description": (
                "Ask another specialised agent a question that your passages do not cover. "
                "Its answer, with its sources, is given back to you before you answer."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": list(agents), "description": "Agent to ask."},
                    "question": {"type": "string", "description": "Self-contained question for that agent."},
                },
                "required": ["agent", "question"],
            },
        },
    }


def _declared_calls(message: Any, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(name, raw arguments) of the message's calls to declared tools; validation is the tool runner's job."""
    found = []
    for call in getattr(message, "tool_calls", None) or []:
        function = getattr(call, "function", None)
        if function is not None and function.name in names:
            found.append((function.name, function.arguments or "{}"))
    return tuple(found)


def _tool_consults(message: Any, consultable: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Valid `consult_agent` calls of a response message; malformed or unknown ones are ignored."""
    found: list[tuple[str, str]] = []
    for call in getattr(message, "tool_calls", None) or []:
        function = getattr(call, "function", None)
        if function is None or function.name != CONSULT_TOOL:
            continue
        try:
            args = json.loads(function.arguments or "{}")
        except json.JSONDecodeError:
            continue
        agent, question = args.get("agent"), args.get("question")
        if agent in consultable and isinstance(question, str) and question.strip():
            found.append((agent, question.strip()))
    return tuple(dict.fromkeys(found))


# --- Cache of identical calls ------------------------------------------------------------------------


def cache_key(
    backend: str,
    model: str | None,
    question: str,
    passages: Sequence[Passage],
    config: LLMConfig,
    consultable: Sequence[str] = (),
    tools: Sequence[dict[str, Any]] = (),
) -> str:
    """Hash of everything that shapes a completion: backend, model, the full prompt, tools and sampling parameters."""
    material: dict[str, Any] = {
        "backend": backend,
        "model": model,
        "messages": build_prompt(question, passages, config),
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "consultable": list(consultable),
    }
    if tools:  # only when offered, so keys of calls without tools stay as they were
        material["tools"] = list(tools)
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode("utf-8")).hexdigest()


class CompletionCache:
    """Bounded in-process LRU of completions by `cache_key`; thread-safe.

    In-process rather than Postgres: a hit then costs a dict lookup instead of a round trip, and losing the cache on
    restart only costs the calls it would have saved.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Completion] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key: str, completion: Completion) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = completion
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# --- Extractive (offline) ----------------------------------------------------------------------------

NO_DOCUMENTS = "I have no documents about that in my knowledge base."
_MAX_SENTENCES = 4  # beyond this a quote collage stops reading like an answer
_WORD = re.compile(r"[a-z0-9]+")  # apostrophes split words: "apple's" -> "apple", "s"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*\n\s*|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_STOP_WORDS_TEXT = (
    "a about above after again all am an and any are as at be because been before being below between "
    "both but by can could did do does doing down during each few for from further had has have having "
    "he her here hers him his how i if in into is it its itself just me more most my no nor not of off "
    "on once only or other our ours out over own please same she should so some such than that the "
    "their theirs them then there these they this those through to too under until up very was we were "
    "what when where which while who whom why will with would you your yours tell know explain "
)
_STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def _stem(word: str) -> str:
    """Crude suffix stripping so 'rates', 'rated' and 'rating' meet at 'rat' (both sides alike)."""
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # running -> run
            break
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def _terms(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS and (len(w) > 1 or w.isdigit())}


def _words(text: str) -> int:
    return len(text.split())


def _sentences(text: str) -> list[str]:
    parts = (" ".join(part.split()) for part in _SENTENCE_END.split(text))
    return [part for part in parts if part]


class ExtractiveLLM:
    """Answers by quoting the passages' sentences that share most words with the question.

    Deterministic and free. Token counts are whitespace word counts, an approximation of real
    tokenizer counts (English text averages roughly 1.3 tokens per word).
    """

    name = "extractive"

    def complete(
        self,
        question: str,
        passages: Sequence[Passage],
        config: LLMConfig,
        consultable: Sequence[str] = (),
        tools: Sequence[dict[str, Any]] = (),
    ) -> Completion:
        """`consultable` and `tools` are ignored: without generation there is no tool calling (agents.tools has a
        deterministic trigger for this backend instead)."""
        text = self._answer(question, passages, config.max_tokens)
        read = _words(question) + sum(_words(p.text) for p in passages)
        return Completion(text, self.name, None, read, _words(text), 0.0)

    def stream(self, question: str, passages: Sequence[Passage], config: LLMConfig) -> Generator[str, None, Completion]:
        """Same contract as `OpenAILLM.stream`; the whole answer arrives as one delta."""
        completion = self.complete(question, passages, config)
        yield completion.text
        return completion

    def _answer(self, question: str, passages: Sequence[Passage], max_words: int) -> str:
        if not passages:
            return NO_DOCUMENTS
        wanted = _terms(question)
        # (question terms it shares, passage rank, position, sentence) for every sentence.
        candidates = [
            (wanted & _terms(sentence), rank, position, sentence)
            for rank, passage in enumerate(passages)
            for position, sentence in enumerate(_sentences(passage.text))
        ]
        if not candidates:
            return NO_DOCUMENTS
        pool = [c for c in candidates if c[0]]
        if not pool:
            # Retrieval found these passages semantically close even without shared words: quote the
            # opening of the best one rather than refuse.
            pool = [min(candidates, key=lambda c: (c[1], c[2]))]

        # Greedy coverage: next comes the sentence adding most not-yet-covered question terms (then most
        # terms overall, then the better passage, then the earlier sentence); a sentence that adds
        # nothing new would only repeat the answer, so selection stops there.
        chosen: list[tuple[int, int, str]] = []
        covered: set[str] = set()
        budget = max_words
        while pool and len(chosen) < _MAX_SENTENCES and (budget >= 2 or not chosen):
            best = min(pool, key=lambda c: (-len(c[0] - covered), -len(c[0]), c[1], c[2]))
            terms, rank, position, sentence = best
            if chosen and not terms - covered:
                break
            pool.remove(best)
            cost = _words(sentence) + 1  # + its citation marker
            if cost <= budget:
                chosen.append((rank, position, sentence))
                covered |= terms
                budget -= cost
            elif not chosen:  # the best sentence alone is too long: cut it to fit
                cut = " ".join(sentence.split()[: max(budget - 1, 1)]) + "…"
                return cut if budget < 2 else f"{cut} [{rank + 1}]"

        # Read in document order; one marker after each run of sentences from the same passage.
        chosen.sort()
        pieces: list[str] = []
        for i, (rank, _, sentence) in enumerate(chosen):
            last_of_run = i + 1 == len(chosen) or chosen[i + 1][0] != rank
            pieces.append(f"{sentence} [{rank + 1}]" if last_of_run else sentence)
        return " ".join(pieces)


# --- OpenAI-compatible -------------------------------------------------------------------------------

# USD per 1M (input, output) tokens, OpenAI list prices (2025). Dated snapshots match by prefix
# ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini"); any other model, e.g. a self-hosted one, costs 0.0.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def cost_usd(model: str | None, prompt_tokens: int, completion_tokens: int) -> float:
    """Price of one call from `PRICES_PER_MTOK`; unknown models cost 0.0."""
    matches = [name for name in PRICES_PER_MTOK if model and model.startswith(name)]
    if not matches:
        return 0.0
    price_in, price_out = PRICES_PER_MTOK[max(matches, key=len)]
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


def _translate(exc: openai.OpenAIError) -> LLMError:
    # APITimeoutError is a subclass of APIConnectionError; InternalServerError covers every 5xx.
    transient = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
    kind = LLMUnavailable if isinstance(exc, transient) else LLMError
    return kind(f"{type(exc).__name__}: {exc}")


class OpenAILLM:
    """Chat completions from an OpenAI-compatible endpoint; one HTTP client per instance."""

    name = "openai"
    default_model: str

    def __init__(
        self, base_url: str | None, api_key: str | None, default_model: str, timeout_s: float, max_retries: int
    ) -> None:
        self.default_model = default_model
        # Local servers (vLLM, Ollama) ignore the key, but the client refuses to start without one.
        self._client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=max_retries
        )

    def _request(self, question: str, passages: Sequence[Passage], config: LLMConfig) -> dict[str, Any]:
        return {
            "model": config.model or self.default_model,
            "messages": build_prompt(question, passages, config),
            "temperature": config.temperature,
            "max_tokens": config.max_tokens,
        }

    def complete(
        self,
        question: str,
        passages: Sequence[Passage],
        config: LLMConfig,
        consultable: Sequence[str] = (),
        tools: Sequence[dict[str, Any]] = (),
    ) -> Completion:
        """`tools`: OpenAI function specs of the agent's declared tools; calls to them come back in `tool_calls`."""
        request = self._request(question, passages, config)
        offered = ([consult_tool(consultable)] if consultable else []) + list(tools)
        if offered:
            request |= {"tools": offered, "tool_choice": "auto"}
        try:
            response = self._client.chat.completions.create(**request)
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        message = response.choices[0].message if response.choices else None
        text = (message.content or "") if message else ""
        completion = self._completion(text, response.model or request["model"], response.usage)
        if message is not None and consultable and (consults := _tool_consults(message, consultable)):
            completion = dataclasses.replace(completion, consults=consults)
        names = [t["function"]["name"] for t in tools]
        if message is not None and names and (calls := _declared_calls(message, names)):
            completion = dataclasses.replace(completion, tool_calls=calls)
        return completion

    def chat(self, messages: Sequence[dict[str, str]], *, max_tokens: int, temperature: float = 0.0) -> Completion:
        """One plain chat completion (no passages): for Smolit's own tasks, e.g. naming a proposed agent."""
        try:
            response = self._client.chat.completions.create(
                model=self.default_model,
                messages=list(messages),  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        message = response.choices[0].message if response.choices else None
        return self._completion((message.content or "") if message else "", response.model, response.usage)

    def stream(self, question: str, passages: Sequence[Passage], config: LLMConfig) -> Generator[str, None, Completion]:
        """Yields text deltas; the generator's return value is the `Completion` (`yield from`)."""
        request = self._request(question, passages, config)
        parts: list[str] = []
        model, usage = request["model"], None
        try:
            chunks: Iterator[Any] = self._client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
            for chunk in chunks:
                model = chunk.model or model
                usage = chunk.usage or usage  # only the last chunk carries usage
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    parts.append(delta)
                    yield delta
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        return self._completion("".join(parts), model, usage)

    def _completion(self, text: str, model: str, usage: Any) -> Completion:
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        return Completion(text, self.name, model, prompt, completion, cost_usd(model, prompt, completion))


def build_llms(settings: Settings) -> dict[str, LLM]:
    """Every configured backend by name: always `extractive`; `openai` once an endpoint or key is set."""
    llms: dict[str, LLM] = {"extractive": ExtractiveLLM()}
    if settings.openai_base_url or settings.openai_api_key:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        llms["openai"] = OpenAILLM(
            settings.openai_base_url, key, settings.openai_model, settings.llm_timeout_s, settings.llm_max_retries
        )
    return llms
