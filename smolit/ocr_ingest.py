"""The pipeline steps `smolit ingest` runs for an agent (`ocr`, `entities`): one model, or a selector (or a vote)
over the card's candidates.

With several candidates the model memory is read from the model-outcomes topic of the running Smolit (or the
configured broker) and every file's outcome is written back there, so the next ingest (and any other reader of
the topic) learns from it. Without a reachable broker the selector starts from an empty memory and its outcomes
stay in this process (a notice says so).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from smolit.agents import OcrStep, build_ocr_step
from smolit.agents.entities import EntityStep
from smolit.contracts import AgentCard, ModelOutcomeRecorded, Topic, TopicNames
from smolit.infra.settings import Settings

from .errors import SetupError

console = Console(stderr=True)


class _Memory:
    """The model memory read from the model-outcomes topic and a sink writing new outcomes back there (both
    empty/no-op without a reachable broker)."""

    def __init__(self, settings: Settings) -> None:
        from smolit.agents.ocr_selection import load_memory
        from smolit.agents.selection import ModelMemory
        from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

        from .stack import running_bootstrap

        self.memory = ModelMemory()
        self.on_outcome: Callable[[ModelOutcomeRecorded], None] | None = None
        self._producer: EventProducer | None = None
        try:
            profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
            topic = TopicNames(settings.topic_prefix)(Topic.MODEL_OUTCOMES)
            self.memory = load_memory(profile.consumer("smolit-ingest-memory"), topic)
            sink = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
            self._producer = sink

            def on_outcome(event: ModelOutcomeRecorded) -> None:
                sink.send(Outgoing(Topic.MODEL_OUTCOMES, event.model, event))

            self.on_outcome = on_outcome
        except SetupError:
            console.print("no running Smolit: model selection starts without model memory and records nothing")
        except Exception as exc:  # broker down or unreachable: selection still works, only without memory
            console.print(f"model memory unavailable ({type(exc).__name__}: {exc}); selecting without it")

    def close(self) -> None:
        if self._producer is None:
            return
        try:  # the documents are read either way: losing outcomes must not fail the ingest
            self._producer.flush(10)
        except Exception as exc:
            console.print(f"model outcomes not recorded ({type(exc).__name__}: {exc})")
        finally:
            self._producer.close(1)
            self._producer = None


def ingest_ocr_step(settings: Settings, card: AgentCard | None) -> tuple[OcrStep | None, Callable[[], None]]:
    """(the step or None when the card has no `ocr` step, a closer to call after reading)."""
    if card is not None and "ocr" not in card.pipeline.ingest:
        return None, lambda: None
    names = card.pipeline.candidates_for("ocr") if card is not None else ()
    if card is None or names == ("smolit-ocr",):  # the pool has no card: the default model
        step = build_ocr_step(settings)
        if card is not None:
            step.policy = step.policy.with_checks(card.pipeline.checks_for("ocr"))
        return step, step.close
    from smolit.agents.ocr_selection import build_selecting_step
    from smolit.infra.embedder import build_embedder

    memory = _Memory(settings)
    embedder = build_embedder(settings)
    step = build_selecting_step(
        settings,
        names,
        memory=memory.memory,
        embed=embedder.embed,
        agent=card.name,
        domain=card.domain or card.name,
        on_outcome=memory.on_outcome,
    )
    step.policy = step.policy.with_checks(card.pipeline.checks_for("ocr"))

    def close() -> None:
        step.close()
        memory.close()

    return step, close


def ingest_entity_step(settings: Settings, card: AgentCard | None) -> tuple[EntityStep | None, Callable[[], None]]:
    """(the card's `entities` step or None, a closer): one candidate runs as is; several are selected per document
    (or all voted on with `ensemble: {entities: vote}`) with the model memory of the running Smolit."""
    if card is None or "entities" not in card.pipeline.ingest:
        return None, lambda: None
    from smolit.agents.entities import build_entity_step

    names = card.pipeline.candidates_for("entities")
    ensemble = card.pipeline.ensemble.get("entities") == "vote"
    require = card.pipeline.checks_for("entities").require
    if len(names) == 1:
        step = build_entity_step(settings, names, require=require, agent=card.name, domain=card.domain or card.name)
        return step, step.close
    from smolit.infra.embedder import build_embedder

    memory = _Memory(settings)
    step = build_entity_step(
        settings,
        names,
        ensemble,
        require,
        memory=memory.memory,
        embed=build_embedder(settings).embed,
        agent=card.name,
        domain=card.domain or card.name,
        on_outcome=memory.on_outcome,
    )

    def close() -> None:
        step.close()
        memory.close()

    return step, close
