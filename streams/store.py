"""Durable table state for the stream worker: faust's RocksDB store (rocksdict driver), partition named by us.

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
import os
from pathlib import Path
from typing import IO, Any

from faust import stores
from faust.stores import rocksdb

#: The URL scheme under which faust finds this store (`store="smolit-rocksdb://"`).
SCHEME = "smolit-rocksdb"


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


def register() -> None:
    """Make `smolit-rocksdb://` a faust store URL (idempotent)."""
    stores.STORES.aliases[SCHEME] = f"{__name__}:PartitionedRocksStore"


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
