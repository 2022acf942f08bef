"""Ports picked for embedded servers stay out of the range outgoing connections draw from."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from smolit.infra.embedded import _proc
from smolit.infra.embedded._proc import free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port < low for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    (held,) = free_ports(1)
    # Only two candidates below the "range": the held port and its neighbour.
    monkeypatch.setattr(_proc, "_PORT_FLOOR", held)
    monkeypatch.setattr(_proc, "_ephemeral_low", lambda: held + 2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", held))
        taken.listen()
        for _ in range(20):
            assert held not in free_ports(1)
