"""Stream worker table stores: packed changelog records; data slots (one locked folder per worker process, the
lowest free one first)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust

from smolit.streams.store import MEMORY_SCHEME, PACK_KEY, DataSlot, PackedMemoryStore, encode_packs, register


def test_workers_get_separate_slots_and_a_restart_gets_its_slot_back(tmp_path: Path) -> None:
    first, second = DataSlot(tmp_path), DataSlot(tmp_path)
    assert (first.path.name, second.path.name) == ("slot-0", "slot-1")
    assert first.path.is_dir() and second.path.is_dir()
    first.release()  # the first worker dies (the kernel releases its lock the same way on kill -9)
    again = DataSlot(tmp_path)
    assert again.path == tmp_path / "slot-0"
    again.release()
    second.release()


def _record(partition: int, key: bytes, value: bytes | None, offset: int) -> Any:
    """The parts of a faust changelog event the stores read."""
    message = SimpleNamespace(key=key, value=value, partition=partition, offset=offset, tp=("t", partition))
    return SimpleNamespace(message=message, key=json.loads(key), value=None if value is None else json.loads(value))


def test_packs_split_by_size_and_keep_every_key() -> None:
    changes = {f"k{i}": json.dumps({"v": i, "pad": "x" * 100}) for i in range(50)} | {"gone": None}
    packs = encode_packs(changes, max_bytes=1000)
    assert len(packs) > 5 and all(len(p) < 1200 for p in packs)
    merged: dict[str, Any] = {}
    for pack in packs:
        merged |= json.loads(pack)
    assert merged == {k: None if v is None else json.loads(v) for k, v in changes.items()}


def test_memory_store_applies_single_records_and_packs_in_log_order() -> None:
    register()
    app = faust.App("smolit-test-packs", store=f"{MEMORY_SCHEME}://")
    store = app.Table("t", partitions=2).data
    assert isinstance(store, PackedMemoryStore)
    batch = [
        _record(0, b'"a"', b'{"n":1}', 0),  # a single-key record, as written before packs
        _record(0, PACK_KEY, encode_packs({"a": '{"n":2}', "b": '{"n":3}'})[0], 1),
        _record(1, PACK_KEY, encode_packs({"c": '{"n":4}'})[0], 0),
        _record(0, PACK_KEY, encode_packs({"b": None})[0], 2),  # deleted by a later pack
        _record(0, b'"d"', b'{"n":5}', 3),
    ]
    store.apply_changelog_batch(batch, to_key=lambda k: k, to_value=lambda v: v)
    assert dict(store.data) == {"a": {"n": 2}, "c": {"n": 4}, "d": {"n": 5}}
    assert store._key_partition["c"] == 1
