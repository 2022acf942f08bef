"""The gateway's sentiment model: `smolit-sentiment@champion` (setting) behind the `RatingInference` port.

The model manager opens MLflow and the embedder only when the first comment-only feedback arrives, keeps the
loaded version, and swaps when a `ModelPromoted` for it arrives on the router-models topic (the gateway follows
that topic with `manager.handle`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from smolit.gateway import InferredRating, RatingInference, RatingUnavailable
from smolit.infra.model_manager import ModelManager, ModelNotFound
from smolit.infra.registry import ModelRegistry, RegistryError
from smolit.infra.sentiment import TASK_TYPE, SentimentClassifier, SentimentModel
from smolit.infra.settings import Settings

from ..errors import SetupError


class _Lazy:
    """One registry and one embedder per process, opened at first use and shared by source and loader."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._registry: ModelRegistry | None = None
        self._embedder: Any = None

    def registry(self) -> ModelRegistry:
        from .wiring import open_model_registry

        with self._lock:
            if self._registry is None:
                self._registry = open_model_registry(self._settings, "smolit-models")
            return self._registry

    def embedder(self) -> Any:
        from smolit.infra.embedder import build_embedder

        with self._lock:
            if self._embedder is None:
                self._embedder = build_embedder(self._settings)
            return self._embedder


def sentiment_manager(settings: Settings) -> tuple[ModelManager, RatingInference]:
    """The manager (for the router-models loop) and the inference function the gateway calls."""
    lazy = _Lazy(settings)

    def load(name: str, version: str, _tags: Mapping[str, str]) -> SentimentClassifier:
        model = SentimentModel.from_payload(lazy.registry().load(name, version))
        if not model.embedder.startswith(settings.embedder):  # weights fitted on other vectors would score noise
            raise ModelNotFound(
                f"{name} v{version} was trained on {model.embedder} embeddings; SMOLIT_EMBEDDER is {settings.embedder}"
            )
        return SentimentClassifier(model, lazy.embedder().embed)

    manager = ModelManager(lazy.registry, {TASK_TYPE: load})

    def infer(comment: str) -> InferredRating:
        started = time.perf_counter()
        try:
            loaded = manager.get(settings.sentiment_model)
        except (ModelNotFound, RegistryError, SetupError) as exc:
            raise RatingUnavailable(f"{exc}; train one with `smolit models train-sentiment`") from exc
        prediction = loaded.model.classify(comment)
        return InferredRating(
            label="positive" if prediction.label == "positive" else "negative",
            confidence=prediction.confidence,
            name=loaded.name,
            version=loaded.version,
            alias=loaded.alias,
            seconds=time.perf_counter() - started,
        )

    return manager, infer
