"""Client settings per broker kind. Every Tansu workaround lives here and nowhere else.

Embedded broker (Tansu) quirks, verified: group joins take ~session.timeout.ms/2, so the session timeout is short;
the high watermark is wrong when a producer batches several records, so batches hold one record; idempotence
(InitProducerId v0) and read_committed do not work; an empty fetch is held for the full fetch.wait.max.ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KafkaProfile:
    bootstrap: str
    embedded: bool
    fetch_wait_ms: int = 10
    """Embedded broker only: how long a fetch may be held (see `Settings.kafka_fetch_wait_ms`)."""

    def common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "client.id": "smolit"}

    def producer(self) -> dict[str, Any]:
        conf = {**self.common(), "acks": "all", "linger.ms": 2, "enable.idempotence": False}
        if self.embedded:
            conf["batch.num.messages"] = 1
        else:
            conf["enable.idempotence"] = True
        return conf

    def consumer(self, group: str, *, offset_reset: str = "earliest") -> dict[str, Any]:
        conf = {
            **self.common(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": offset_reset,
            "isolation.level": "read_uncommitted" if self.embedded else "read_committed",
            "partition.assignment.strategy": "range",
        }
        if self.embedded:
            # Tansu holds a fetch for the whole fetch.wait.max.ms even when records arrive meanwhile, which adds
            # that wait to every hop; on s3 storage it also reads more records the longer the fetch may take.
            conf |= {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": self.fetch_wait_ms}
        return conf

    def admin(self) -> dict[str, Any]:
        return self.common()

    @property
    def faust_fetch_wait_ms(self) -> int | None:
        """faust's consumer fetch wait to set with `faust_patch.set_fetch_max_wait` (None: faust's 1500 ms)."""
        return self.fetch_wait_ms if self.embedded else None

    def faust(self) -> dict[str, Any]:
        """faust-streaming (aiokafka) app settings for this broker kind.

        At-least-once only: faust's `exactly_once` needs idempotent/transactional producers (InitProducerId v0
        fails on Tansu). Tables live in memory and are rebuilt from their changelog topics on start.
        """
        conf: dict[str, Any] = {
            "broker": ";".join(f"kafka://{host}" for host in self.bootstrap.split(",")),
            "store": "memory://",
            "processing_guarantee": "at_least_once",
            "producer_acks": -1,
            "consumer_auto_offset_reset": "earliest",
            "web_enabled": False,
            "key_serializer": "json",
            "value_serializer": "json",
        }
        if self.embedded:
            # One record per producer batch (Tansu's high watermark is wrong otherwise, which breaks changelog
            # recovery: faust reads a changelog up to the high watermark); short group joins.
            conf |= {
                "producer_max_batch_size": 1,
                "producer_linger": 0.0,
                "broker_session_timeout": 6.0,
                "broker_heartbeat_interval": 1.0,
            }
        return conf
