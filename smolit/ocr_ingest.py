"""The `ocr` step `smolit ingest` runs for an agent: one model, or a selector over the card's candidates.

With several candidates the model memory is read from the model-outcomes topic of the running Smolit (or the
configured broker) and every file's outcome is written back there, so the next ingest (and any other reader of
the topic) learns from it. Without a reachable broker the selector starts from an empty memory and its outcomes
stay in this process (a notice says so).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from smolit.agents import OcrStep, build_ocr_step
from smolit.contracts import AgentCard, ModelOutcomeRecorded, Topic, TopicNames
from smolit.infra.settings import Settings

from .errors import SetupError

console = Console(stderr=True)


def ingest_ocr_step(settings: Settings, card: AgentCard | None) -> tuple[OcrStep | None, Callable[[], None]]:
    """(the step or None when the card has no `ocr` step, a closer to call after reading)."""
    if card is not None and "ocr" not in card.pipeline.ingest:
        return None, lambda: None
    names = card.pipeline.candidates_for("ocr") if card is not None else ()
    if card is None or names == ("smolit-ocr",):  # the pool has no card: the default model
        step = build_ocr_step(settings)
        return step, step.close
    from smolit.agents.ocr_selection import build_selecting_step, load_memory
    from smolit.agents.selection import ModelMemory
    from smolit.infra.embedder import build_embedder
    from smolit.infra.kafka import EventProducer, KafkaProfile, Outgoing

    from .stack import running_bootstrap

    memory, producer, on_outcome = ModelMemory(), None, None
    try:
        profile = KafkaProfile(running_bootstrap(settings), embedded=settings.tansu_profile)
        topic = TopicNames(settings.topic_prefix)(Topic.MODEL_OUTCOMES)
        memory = load_memory(profile.consumer("smolit-ingest-memory"), topic)
        sink = EventProducer(profile.producer(), TopicNames(settings.topic_prefix))
        producer = sink

        def on_outcome(event: ModelOutcomeRecorded) -> None:
            sink.send(Outgoing(Topic.MODEL_OUTCOMES, event.model, event))

    except SetupError:
        console.print("no running Smolit: OCR model selection starts without model memory and records nothing")
    except Exception as exc:  # broker down or unreachable: selection still works, only without memory
        console.print(f"model memory unavailable ({type(exc).__name__}: {exc}); selecting without it")
    embedder = build_embedder(settings)
    step = build_selecting_step(
        settings,
        names,
        memory=memory,
        embed=embedder.embed,
        agent=card.name,
        domain=card.domain or card.name,
        on_outcome=on_outcome,
    )

    def close() -> None:
        step.close()
        if producer is None:
            return
        try:  # the documents are read either way: losing outcomes must not fail the ingest
            producer.flush(10)
        except Exception as exc:
            console.print(f"model outcomes not recorded ({type(exc).__name__}: {exc})")
        finally:
            producer.close(1)

    return step, close
