"""Kafka adapters: client profiles, the event producer, the one consumer loop, dedupe, topic admin, a reader."""

from .admin import BrokerUnreachable, check_broker, ensure_topics, missing_topics
from .consumer import ConsumerLoop, Handler, LoopConfig, RetryableError, dead_letter
from .dedupe import Deduper, MemoryDeduper, PostgresDeduper
from .producer import EventProducer, Outgoing, ProduceError
from .profile import KafkaProfile
from .reader import TopicMissing, read_topic_events

__all__ = [
    "BrokerUnreachable",
    "ConsumerLoop",
    "Deduper",
    "EventProducer",
    "Handler",
    "KafkaProfile",
    "LoopConfig",
    "MemoryDeduper",
    "Outgoing",
    "PostgresDeduper",
    "ProduceError",
    "RetryableError",
    "TopicMissing",
    "check_broker",
    "dead_letter",
    "ensure_topics",
    "missing_topics",
    "read_topic_events",
]
