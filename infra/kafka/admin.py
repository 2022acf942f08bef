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


def ensure_topics(config: dict[str, object], topics: TopicNames, partitions: int, timeout_s: float = 30.0) -> None:
    """Create every Smolit topic that does not exist yet (existing ones are left alone)."""
    existing = set(check_broker(config, timeout_s))
    missing = [name for name in topics.all() if name not in existing]
    if not missing:
        return
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing],
        operation_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: a peer created it first
                continue
            raise RuntimeError(f"could not create topic {name}: {exc}") from exc
