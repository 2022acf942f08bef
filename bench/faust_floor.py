"""faust's own cost per event: a faust agent that only counts the events of the stream worker's backlog.

Run from the repository root: `python bench/faust_floor.py [--events 30000] [--variant JSON ...]`. Prints one JSON
object per variant. The parent starts an in-memory embedded broker and produces the backlog of
`smolit bench streams` (decisions, answers, 30 % feedback; one record per producer batch, as on the embedded
profile); each variant then runs in a fresh process as its own consumer group, with the stream worker's faust
settings (`KafkaProfile.faust()`, the fetch-wait patch) plus the variant's (e.g. `'{"stream_buffer_maxsize": 16384}'`),
and an agent that takes batches of 500 (like the worker's stages) and does nothing with them. It reports events/s
and the process's CPU time per event from its first batch to its last: the floor under any faust stage on this
broker, whatever the stage does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

_TAKE = 500


def _consume(bootstrap: str, app_id: str, extra: dict[str, Any], expected: int) -> None:
    import faust

    from smolit.contracts import Topic, TopicNames
    from smolit.infra.kafka import KafkaProfile
    from smolit.infra.kafka.faust_patch import set_fetch_max_wait

    profile = KafkaProfile(bootstrap, embedded=True)
    topics = TopicNames("smolit")
    if profile.faust_fetch_wait_ms is not None:
        set_fetch_max_wait(profile.faust_fetch_wait_ms)
    conf = profile.faust() | extra | {"datadir": tempfile.mkdtemp(prefix="smolit-faust-floor-")}
    app = faust.App(app_id, topic_partitions=4, **conf)
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    inputs = app.topic(topics(Topic.DECISIONS), topics(Topic.ANSWERS), topics(Topic.FEEDBACK), **raw)
    me = psutil.Process()
    seen = 0
    start: tuple[float, float, int] | None = None

    async def count(stream: Any) -> AsyncIterator[None]:
        nonlocal seen, start
        async for events in stream.take_events(_TAKE, within=0.05):
            if start is None:
                start = (time.perf_counter(), _cpu_s(me), len(events))
            seen += len(events)
            if seen >= expected:
                done = seen - start[2]
                elapsed = time.perf_counter() - start[0]
                result = {
                    "variant": extra,
                    "events": done,
                    "events_per_s": round(done / elapsed, 1),
                    "cpu_us_per_event": round((_cpu_s(me) - start[1]) / done * 1e6, 1),
                    "load_average_1m": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(result), flush=True)
                os._exit(0)  # faust's worker has no quick clean stop; nothing is left to flush
            yield None

    app.agent(inputs, name="floor-count")(count)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--variant", action="append", default=[], help="extra faust settings as a JSON object")
    parser.add_argument("--consume", nargs=4, help=argparse.SUPPRESS)  # bootstrap, app id, variant, expected
    args = parser.parse_args()
    if args.consume:
        bootstrap, app_id, variant, expected = args.consume
        _consume(bootstrap, app_id, json.loads(variant), int(expected))
        return

    from smolit.bench import _streams_script
    from smolit.contracts import TopicNames
    from smolit.infra.embedded import EmbeddedBroker
    from smolit.infra.kafka import EventProducer, KafkaProfile, ensure_topics

    variants = [json.loads(v) for v in args.variant] or [{}]
    with tempfile.TemporaryDirectory(prefix="smolit-faust-floor-") as tmp, EmbeddedBroker(Path(tmp), "memory") as b:
        bootstrap = b.start()
        profile = KafkaProfile(bootstrap, embedded=True)
        ensure_topics(profile.admin(), TopicNames("smolit"), 4, timeout_s=20)
        producer = EventProducer(profile.producer(), TopicNames("smolit"))
        backlog = _streams_script(max(1, round(args.events / 2.3)), ["finance", "legal", "general"], now=None)
        for out in backlog:
            producer.send(out)
        producer.flush(timeout_s=max(30.0, len(backlog) / 500))
        producer.close()
        for i, variant in enumerate(variants):
            argv = [sys.executable, __file__, "--consume", bootstrap, f"floor-{i}", json.dumps(variant)]
            subprocess.run([*argv, str(len(backlog))], timeout=max(300, len(backlog) / 100), check=True)


if __name__ == "__main__":
    main()
