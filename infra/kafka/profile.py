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
            # Tansu holds an empty fetch for the whole fetch.wait.max.ms even when records arrive meanwhile,
            # which adds that wait to every hop; a short wait keeps a hop in milliseconds.
            conf |= {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 10}
        return conf

    def admin(self) -> dict[str, Any]:
        return self.common()
