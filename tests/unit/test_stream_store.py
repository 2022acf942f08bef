"""Stream worker data slots: one locked folder per worker process, the lowest free one first."""

from __future__ import annotations

from pathlib import Path

from smolit.streams.store import DataSlot


def test_workers_get_separate_slots_and_a_restart_gets_its_slot_back(tmp_path: Path) -> None:
    first, second = DataSlot(tmp_path), DataSlot(tmp_path)
    assert (first.path.name, second.path.name) == ("slot-0", "slot-1")
    assert first.path.is_dir() and second.path.is_dir()
    first.release()  # the first worker dies (the kernel releases its lock the same way on kill -9)
    again = DataSlot(tmp_path)
    assert again.path == tmp_path / "slot-0"
    again.release()
    second.release()
