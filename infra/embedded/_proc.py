"""Process plumbing shared by the embedded launchers: free ports, children that die with us, readiness, stop.

Children run in their own session (so a terminal Ctrl+C reaches only the supervisor, which stops them in
order) and carry a parent-death signal, so they do not outlive a Python parent that is killed outright.
The parent-death signal fires when the *thread* that spawned the child exits: start launchers from a
thread that lives as long as the children should (normally the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child


class EmbeddedStartError(RuntimeError):
    """An embedded server did not start; the message names what failed and the log to read."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (another process may still take it before use)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free TCP ports below the kernel's ephemeral range: all stay bound until every one is picked.

    A port the kernel hands out for `bind(0)` lies in the ephemeral range, which outgoing connections draw
    from too: a server started minutes later (the gateway after the demo load, while the broker churns S3
    connections) could find its port taken as the local end of some connection. Ports below the range are
    only ever taken by servers binding them on purpose.
    """
    low = _ephemeral_low()
    candidates = (
        random.Random().sample(range(_PORT_FLOOR, low), min(_TRIES, low - _PORT_FLOOR)) if low > _PORT_FLOOR else []
    )
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            if len(ports) == count:
                break
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
        while len(ports) < count:  # no room below the range: let the kernel choose
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


_PORT_FLOOR = 20000  # above the well-known and most registered service ports
_TRIES = 200


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux default


def ports_available(ports: Sequence[int], host: str = "127.0.0.1") -> bool:
    """Whether every port in `ports` can be bound right now (as servers bind: with SO_REUSEADDR)."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class Child:
    """One spawned server process and the log file that holds its output."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    """None: the child writes to this process's stdout/stderr."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def failure(self, what: str) -> EmbeddedStartError:
        where = f"see {self.log_path}" if self.log_path is not None else "see its output above"
        return EmbeddedStartError(f"{self.name} {what}; {where}")


def _death_signal_hook(sig: signal.Signals, parent_pid: int) -> Callable[[], None]:
    def hook() -> None:
        # Runs in the child after any uid switch (which clears the setting), right before exec.
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def spawn(
    name: str,
    argv: Sequence[str],
    log_path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    uid: int | None = None,
    gid: int | None = None,
    death_signal: signal.Signals = signal.SIGTERM,
) -> Child:
    """Start `argv` in its own session with output appended to `log_path`, optionally as uid/gid.

    `log_path=None` keeps the child on this process's stdout/stderr (container logs, process managers).
    """
    with contextlib.ExitStack() as stack:
        log: IO[bytes] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = stack.enter_context(log_path.open("ab"))
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT if log is not None else None,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                preexec_fn=_death_signal_hook(death_signal, os.getpid()),
            )
        except OSError as exc:
            raise EmbeddedStartError(f"{name} could not be executed ({argv[0]}): {exc}") from exc
    return Child(name, proc, log_path)


def wait_ready(children: Sequence[Child], ready: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll `ready` until it is true; fail early if a child exits, or at the deadline."""
    while True:
        for child in children:
            if not child.running():
                raise child.failure(f"exited with code {child.proc.returncode} while starting")
        with contextlib.suppress(Exception):  # not ready yet; the deadline bounds the retries
            if ready():
                return
        if time.monotonic() >= deadline:
            raise children[-1].failure(f"was not ready ({what}) before the start timeout")
        time.sleep(0.1)


def run_to_completion(child: Child, deadline: float) -> None:
    """Wait for a one-shot child (e.g. initdb); stop it at the deadline; fail on a non-zero exit."""
    try:
        code = child.proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        terminate(child, 5.0)
        raise child.failure("did not finish before the start timeout") from None
    if code != 0:
        raise child.failure(f"failed with exit code {code}")


def terminate(child: Child, timeout_s: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to the child, wait up to `timeout_s`, then SIGKILL its whole process group."""
    if child.running():
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout_s)
    # The group also holds any helpers the child forked (postgres backends); sweep stragglers.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    child.proc.wait()
