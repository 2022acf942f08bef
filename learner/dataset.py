"""From logged events to training outcomes."""

from __future__ import annotations

import hashlib
from uuid import UUID

import numpy as np

from smolit.contracts import TrainingExample, unpack_vector

from .trainer import Outcome


def is_good(example: TrainingExample) -> bool | None:
    """A failure or timeout is a bad outcome; feedback sentiment decides otherwise; no signal: None."""
    if example.failed:
        return False
    if example.positive is None and example.rating is not None and example.rating in (-1, 1):
        return example.rating > 0  # thumbs from a producer that does not set `positive`
    return example.positive


def outcome_of(example: TrainingExample) -> Outcome:
    """The example as a training outcome (see `is_good`)."""
    return Outcome(
        embedding=np.asarray(unpack_vector(example.embedding), dtype=np.float32),
        agent=example.agent,
        good=is_good(example),
        preferred=example.preferred_agent,
        propensity=example.propensity,
    )


def in_holdout(event_id: UUID, share: float, seed: int) -> bool:
    """Reproducible holdout membership by event id: the same log always splits the same way."""
    digest = hashlib.blake2b(f"{seed}:{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share
