"""The gateway process: the HTTP API (chat, OpenAI-compatible, feedback, metrics) over the event log."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from smolit.contracts import AgentCard, Topic
from smolit.infra.agent_gauges import AgentGaugeProjection, AgentGauges
from smolit.infra.cards import load_cards
from smolit.infra.catalog import CardCatalog
from smolit.infra.heartbeat import Heartbeat

from ..errors import SetupError
from .wiring import Wiring, check_broker_quickly, follow_lifecycle, log, poll_forever


def run_gateway(w: Wiring, stop: threading.Event) -> None:
    import uvicorn

    from smolit.gateway import AnswerProjection, GatewayDeps, PendingRequests, create_app

    from .sentiment import sentiment_manager

    pending = PendingRequests()
    # Each gateway instance must see every answer, so its group is its own; committed offsets let it resume.
    group = f"gateway-{w.settings.gateway_instance}"
    loop = w.loop(group, [Topic.DECISIONS, Topic.ANSWERS], AnswerProjection(w.pool, pending).handle, dedupe=False)
    # Stream metrics and agent flags as gauges on this /metrics: a fresh group per process re-reads both topics
    # from the start, so the gauges hold the last value per agent again after a restart (no compaction needed).
    gauges = AgentGaugeProjection(AgentGauges.create(w.registry))
    gauge_loop = w.loop(
        f"gauges-{w.instance}", [Topic.AGENT_METRICS, Topic.AGENT_LIFECYCLE], gauges.handle, dedupe=False
    )
    # Agents created at runtime join the model list (/v1/models) and the agents a request may name.
    cards = CardCatalog(load_cards(w.settings.agents_dir))
    catalog_loop = follow_lifecycle(w, "gateway", cards.handle)
    # Comment-only feedback gets its rating from the sentiment model (loaded at first use); a promotion of that
    # model (`ModelPromoted` on the router-models topic) swaps it without a restart. Every instance follows the
    # topic under its own group; re-reading old promotions is a no-op (the registry alias is the truth).
    sentiment, infer_rating = sentiment_manager(w.settings)
    models_loop = w.loop(f"gateway-models-{w.instance}", [Topic.ROUTER_MODELS], sentiment.handle, dedupe=False)
    app = create_app(
        GatewayDeps(
            producer=w.producer,
            pool=w.pool,
            pending=pending,
            cards=cards,
            registry=w.registry,
            broker_check=lambda: check_broker_quickly(w.profile),
            request_timeout_s=w.settings.request_timeout_s,
            max_request_chars=w.settings.max_request_chars,
            max_attachments=w.settings.max_attachments,
            max_attachment_bytes=w.settings.max_attachment_bytes,
            auth=authenticator(w, cards),
            guard=prompt_guard(w),
            retired=lambda: gauges.retired,
            infer_rating=infer_rating,
            sentiment_min_confidence=w.settings.sentiment_min_confidence,
            sentiment_timeout_s=w.settings.sentiment_timeout_s,
        )
    )
    thread = loop.start_thread()
    gauge_thread = gauge_loop.start_thread()
    catalog_thread = catalog_loop.start_thread()
    models_thread = models_loop.start_thread()
    loop.assigned.wait(30)
    poller = threading.Thread(target=poll_forever, args=(w.producer, stop), name="producer-poll", daemon=True)
    poller.start()
    heartbeat = Heartbeat(w.pool, "gateway", w.instance)
    heartbeat.start()
    config = uvicorn.Config(app, host=w.settings.host, port=w.settings.port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    def exit_on_stop() -> None:
        stop.wait()
        server.should_exit = True

    watcher = threading.Thread(target=exit_on_stop, daemon=True)
    watcher.start()
    log.info("gateway ready", url=f"http://{w.settings.host}:{w.settings.port}")
    try:
        server.run()
    finally:
        stop.set()
        heartbeat.stop()
        loop.stop()
        gauge_loop.stop()
        catalog_loop.stop()
        models_loop.stop()
        thread.join(15)
        gauge_thread.join(15)
        catalog_thread.join(15)
        models_thread.join(15)


def authenticator(w: Wiring, cards: Mapping[str, AgentCard]) -> Any:
    from smolit.gateway.auth import Authenticator
    from smolit.gateway.ratelimit import RateLimiter
    from smolit.infra.keys import KeyStore

    s = w.settings
    auth = Authenticator.for_settings(
        mode=s.auth,
        host=s.host,
        keys=KeyStore(w.pool),
        limiter=RateLimiter(s.rate_limit_per_s, s.rate_limit_burst),
        cards=cards,
    )
    log.info("gateway auth", mode=s.auth, keys_required=auth.required, rate_limit_per_s=s.rate_limit_per_s)
    if auth.required and not KeyStore(w.pool).list(include_revoked=False):
        log.warning("API keys are required but none exists: every request answers 401; run `smolit keys create`")
    return auth


def prompt_guard(w: Wiring) -> Any:
    from smolit.gateway.guard import GuardMetrics, PromptGuard
    from smolit.gateway.prompt_filter import OpenAIModeration, PromptFilter

    s = w.settings
    if s.prompt_filter == "off":
        return None
    embedder = None
    if s.prompt_filter == "on":
        from smolit.infra.embedder import build_embedder

        embedder = build_embedder(s)  # ~3 ms per request text (README: prompt filter)
    moderation = None
    if s.moderation == "openai":
        import openai

        if not (s.openai_base_url or s.openai_api_key):
            raise SetupError("SMOLIT_MODERATION=openai needs SMOLIT_OPENAI_BASE_URL and/or SMOLIT_OPENAI_API_KEY")
        key = s.openai_api_key.get_secret_value() if s.openai_api_key else "not-needed"
        client = openai.OpenAI(base_url=s.openai_base_url, api_key=key, timeout=s.llm_timeout_s, max_retries=1)
        moderation = OpenAIModeration(client, s.moderation_model)
    flt = PromptFilter.for_settings(s, embedder, moderation)
    return PromptGuard(flt, w.producer, GuardMetrics.create(w.registry))
