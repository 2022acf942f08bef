"""Topic administration and broker reachability."""

from __future__ import annotations

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from smolit.contracts import TopicNames


class BrokerUnreachable(RuntimeError):
    """The Kafka bootstrap address does not answer."""


def check_broker(config: dict[str, object], timeout_s: float = 5.0) -> list[str]:
    """Topic names the broker reports; raises BrokerUnreachable when it does not answer in time."""
    # Quiet client: an unreachable broker is reported once by the caller, not as librdkafka log spam.
    admin = AdminClient({**config, "log_level": 0})
    try:
        meta = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerUnreachable(str(exc)) from exc
    return sorted(meta.topics)


def missing_topics(config: dict[str, object], topics: TopicNames, timeout_s: float = 5.0) -> list[str]:
    """Smolit topics that do not exist on the broker (services check this at start instead of creating them)."""
    existing = set(check_broker(config, timeout_s))
    return [name for name in topics.all() if name not in existing]


def ensure_topics(
    config: dict[str, object],
    topics: TopicNames,
    partitions: int,
    timeout_s: float = 30.0,
    replication_factor: int = 1,
) -> list[str]:
    """Create every Smolit topic that does not exist yet (existing ones are left alone); returns those created."""
    missing = missing_topics(config, topics, timeout_s)
    if not missing:
        return []
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor) for name in missing],
        operation_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a peer created it first
                continue
            raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    return missing
