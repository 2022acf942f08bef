"""Table stores for the stream worker: packed changelog records, and faust's RocksDB store with the partition named
by us.

Packed changelog: on the embedded broker every changelog record travels in its own producer batch (the Tansu
high-watermark workaround), and aiokafka queues one batch per partition, so each record costs a broker round trip.
The worker therefore writes one changelog record per (table, partition) and input batch, a *pack*: key `PACK_KEY`,
value a JSON object `{table key: value or null}` with the latest value of every key the batch touched (null:
deleted). Both stores here unpack a pack into its keys when they rebuild a table from the changelog; single-key
records written before packs existed are applied as before.

With the in-memory store a restarted worker rebuilds its tables by reading their changelogs from offset 0; the
embedded broker does not compact, so that read grows with the log (~47 s in the fault drill). RocksDB keeps the
tables on local disk together with the last changelog offset applied per partition, so a restart reads only the
changelog records written after that offset.

faust's RocksDB store picks a key's partition from the *current event*. Our writes come from batches that mix
partitions and from a timer with no event at all, so this store takes the partition from `write_partition`, set by
the writer right before each write, and finds a key for reading in whichever partition holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from faust import stores
from faust.stores import memory, rocksdb
from faust.types import EventT

#: The URL scheme under which faust finds the RocksDB store (`store="smolit-rocksdb://"`).
SCHEME = "smolit-rocksdb"
#: ... and the in-memory one.
MEMORY_SCHEME = "smolit-memory"
#: The raw changelog key of a pack (a JSON string, like every table key, that no table uses).
PACK_KEY = b'"__pack__"'
#: A pack is split before it reaches this many bytes (the producer's request limit is 1 MB).
PACK_MAX_BYTES = 512 * 1024


def encode_packs(changes: Mapping[str, str | None], max_bytes: int = PACK_MAX_BYTES) -> list[bytes]:
    """The changelog values for `changes` ({key: value as JSON text, or None}): JSON objects of at most
    ~`max_bytes` each (a single larger value makes a pack of its own)."""
    packs: list[bytes] = []
    items: list[str] = []
    size = 0
    for key, value in changes.items():
        item = f"{json.dumps(key)}:{'null' if value is None else value}"
        if items and size + len(item) > max_bytes:
            packs.append(("{" + ",".join(items) + "}").encode())
            items, size = [], 0
        items.append(item)
        size += len(item) + 1
    if items:
        packs.append(("{" + ",".join(items) + "}").encode())
    return packs


def _runs(batch: Iterable[EventT]) -> Iterator[tuple[bool, list[EventT]]]:
    """Consecutive changelog events grouped into (is_pack, events), in log order."""
    run: list[EventT] = []
    packed = False
    for event in batch:
        is_pack = event.message.key == PACK_KEY
        if run and is_pack != packed:
            yield packed, run
            run = []
        packed = is_pack
        run.append(event)
    if run:
        yield packed, run


def _unpack(event: EventT) -> dict[str, Any]:
    value = event.message.value
    return json.loads(value) if value else {}


class PackedMemoryStore(memory.Store):
    """faust's in-memory store that also applies packs (see the module docstring)."""

    def apply_changelog_batch(
        self, batch: Iterable[EventT], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        for packed, events in _runs(batch):
            if not packed:
                super().apply_changelog_batch(events, to_key, to_value)
                continue
            for event in events:
                partition = event.message.partition
                for key, value in _unpack(event).items():
                    if value is None:
                        self.data.pop(key, None)
                        self._key_partition.pop(key, None)
                    else:
                        self.data[key] = value
                        self._key_partition[key] = partition


class PartitionedRocksStore(rocksdb.Store):
    """faust's RocksDB store with explicit write partitions (see the module docstring)."""

    write_partition: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("driver", "rocksdict")
        super().__init__(*args, **kwargs)

    def _set(self, key: bytes, value: bytes | None) -> None:
        partition = self.write_partition
        if partition is None:
            raise RuntimeError("PartitionedRocksStore: set write_partition before writing a key")
        self._key_index[key] = partition
        self._db_for_partition(partition).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        found = self._get_bucket_for_key(key)
        return None if found is None else found.value

    def _contains(self, key: bytes) -> bool:
        return self._get(key) is not None

    def apply_changelog_batch(
        self, batch: Iterable[EventT], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        for packed, events in _runs(batch):
            if not packed:
                super().apply_changelog_batch(events, to_key, to_value)
                continue
            for event in events:
                partition = event.message.partition
                db = self._db_for_partition(partition)
                for key, value in _unpack(event).items():
                    raw_key = self._encode_key(key)
                    if value is None:
                        db.delete(raw_key)
                        self._key_index.pop(raw_key, None)
                    else:
                        db.put(raw_key, self._encode_value(value))
                        self._key_index[raw_key] = partition
                self.set_persisted_offset(event.message.tp, event.message.offset)


def register() -> None:
    """Make `smolit-rocksdb://` and `smolit-memory://` faust store URLs (idempotent)."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:PartitionedRocksStore"
    stores.STORES.aliases[MEMORY_SCHEME] = f"{__name__}:PackedMemoryStore"


class DataSlot:
    """A folder for one worker's tables, locked while it runs.

    Several workers on one machine need separate RocksDB folders; a restarted worker should find its previous one.
    Slots are numbered: a worker takes the lowest slot no running worker holds (the lock is released by the kernel
    when the process dies, also on kill -9), so a single restarted worker always gets slot 0 back.
    """

    def __init__(self, root: Path, max_slots: int = 64) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for slot in range(max_slots):
            handle: IO[str] = open(root / f"slot-{slot}.lock", "a")  # noqa: SIM115 - held for the process lifetime
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            self._handle = handle
            self.path = root / f"slot-{slot}"
            self.path.mkdir(exist_ok=True)
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            return
        raise RuntimeError(f"all {max_slots} stream worker data slots under {root} are in use")

    def release(self) -> None:
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()
