"""The stream worker process (faust): per-agent metrics windows and training examples."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from smolit.contracts import TopicNames
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.heartbeat import Heartbeat
from smolit.infra.kafka import KafkaProfile
from smolit.infra.metrics import serve_metrics
from smolit.infra.settings import Settings

from .wiring import Wiring, log, replay_lifecycle

if TYPE_CHECKING:
    from smolit.streams import StreamsConfig


def streams_config(
    settings: Settings, profile: KafkaProfile, known_agents: frozenset[str], state_dir: Path | None = None
) -> StreamsConfig:
    """The stream worker's configuration from settings (also used by the benchmark and the tests)."""
    from smolit.streams import StreamsConfig, WindowSpec

    return StreamsConfig(
        app_id=f"{settings.topic_prefix}-streams",
        faust_settings=profile.faust(),
        topics=TopicNames(settings.topic_prefix),
        partitions=settings.topic_partitions,
        spec=WindowSpec(
            tumbling_s=settings.streams_tumbling_s,
            hopping_s=settings.streams_hopping_s,
            hop_s=settings.streams_hop_s,
            lateness_s=settings.streams_lateness_s,
        ),
        feedback_ttl_s=settings.streams_feedback_ttl_s,
        idle_advance_s=settings.streams_idle_advance_s,
        expire_per_tick=settings.streams_expire_per_tick,
        batch_size=settings.streams_batch_size,
        known_agents=known_agents,
        fetch_wait_ms=profile.faust_fetch_wait_ms,
        state_dir=state_dir,
    )


def run_streams(w: Wiring, stop: threading.Event) -> None:
    import faust

    from smolit.streams import StreamMetrics, StreamsApp

    # Agents created at runtime so far count under their names; ones created while this worker runs count under
    # `unknown` until its next start (the faust topology's catalogue is fixed when it starts).
    catalog = CardCatalog(load_cards(w.settings.agents_dir))
    replay_lifecycle(w, catalog.handle)
    known = frozenset(catalog) | {w.settings.fallback_agent}
    bound = serve_metrics(w.registry, w.settings.host, w.settings.streams_metrics_port)
    heartbeat = Heartbeat(w.pool, "streams", w.instance)
    heartbeat.info = {"metrics_port": bound}

    def ready() -> None:
        heartbeat.start()
        log.info("service ready", metrics_port=bound)

    if w.settings.log_level.upper() != "DEBUG":  # faust, mode and aiokafka narrate every start-up step at INFO
        for name in ("faust", "mode", "aiokafka"):
            logging.getLogger(name).setLevel(logging.WARNING)
    slot = None
    if w.settings.streams_store == "rocksdb":
        from smolit.streams.store import DataSlot

        # Per app id (topic prefix) and per worker on this machine; a restarted worker finds its tables again.
        slot = DataSlot(w.settings.data_dir / "streams" / f"{w.settings.topic_prefix}-streams")
    config = streams_config(w.settings, w.profile, known, slot.path if slot else None)
    streams = StreamsApp(config, StreamMetrics.create(w.registry), ready)
    # faust runs its own event loop in this thread and handles SIGINT/SIGTERM itself (clean stop: flush, commit).
    worker = faust.Worker(streams.app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        heartbeat.stop()
        if slot is not None:
            slot.release()
