"""Start-up checks of `smolit run` and `smolit init` against the real broker and database: bad settings fail in
one line with a non-zero exit, `smolit init` prepares what the checks look for."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from smolit.contracts import TopicNames
from smolit.infra.db import MIGRATIONS, migrate
from smolit.infra.kafka import KafkaProfile, missing_topics

pytestmark = pytest.mark.integration


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smolit", *args], env=dict(os.environ) | env, capture_output=True, text=True, timeout=120
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a start-up failure (exit code 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """URL of a new, empty database on the embedded server (so schema tests never touch the shared one)."""
    name = f"db_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield database_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def _env(broker: str, database_url: str, prefix: str) -> dict[str, str]:
    return {
        "SMOLIT_KAFKA_BOOTSTRAP": broker,
        "SMOLIT_KAFKA_PROFILE": "tansu",
        "SMOLIT_DATABASE_URL": database_url,
        "SMOLIT_TOPIC_PREFIX": prefix,
    }


def test_missing_topic_is_one_clear_line(broker: str, database_url: str) -> None:
    """A service whose topic prefix names topics the broker lacks exits 2, naming a topic and `smolit init`."""
    prefix = f"absent{uuid.uuid4().hex[:8]}"
    line = _one_error_line(_run(["run", "router"], **_env(broker, database_url, prefix)))
    assert f"{prefix}.requests.v1" in line and "SMOLIT_TOPIC_PREFIX" in line and "smolit init" in line


def test_wrong_database_credentials_are_one_clear_line(broker: str, database_url: str, topics: TopicNames) -> None:
    """A database user the server rejects ends the service with the server's reason and the setting's name."""
    parts = urlsplit(database_url)
    url = urlunsplit(parts._replace(netloc=f"nobody:wrong@{parts.hostname}:{parts.port}"))
    line = _one_error_line(_run(["run", "agents"], **_env(broker, url, topics.prefix)))
    # Trust auth (embedded) names the missing role; password auth (CI's pgvector) says authentication failed.
    assert '"nobody"' in line and "SMOLIT_DATABASE_URL" in line and "wrong" not in line


def test_newer_database_schema_is_one_clear_line(broker: str, fresh_database: str, topics: TopicNames) -> None:
    """A database migrated by a newer Smolit is refused: this build would misread or damage its tables."""
    migrate(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    line = _one_error_line(_run(["run", "router"], **_env(broker, fresh_database, topics.prefix)))
    assert f"schema version {len(MIGRATIONS) + 1} is newer" in line and "upgrade Smolit" in line


def test_unmigrated_database_points_to_init(broker: str, fresh_database: str, topics: TopicNames) -> None:
    """An empty database is refused with the command that migrates it."""
    line = _one_error_line(_run(["run", "router"], **_env(broker, fresh_database, topics.prefix)))
    assert f"schema version 0, this build needs {len(MIGRATIONS)}" in line and "smolit init" in line


def test_init_migrates_and_creates_topics(broker: str, fresh_database: str) -> None:
    """`smolit init` brings a bare broker and database to what services check for, and is idempotent."""
    prefix = f"init{uuid.uuid4().hex[:8]}"
    env = _env(broker, fresh_database, prefix) | {"SMOLIT_TOPIC_PARTITIONS": "2"}
    first = _run(["init"], **env)
    assert first.returncode == 0, first.stderr
    assert f"schema version {len(MIGRATIONS)}" in first.stdout and f"{len(TopicNames().all())} created" in first.stdout
    assert missing_topics(KafkaProfile(broker, embedded=True).admin(), TopicNames(prefix)) == []
    second = _run(["init"], **env)
    assert second.returncode == 0 and "0 created" in second.stdout, second.stderr


def test_invalid_setting_value_is_one_clear_line(broker: str, database_url: str, topics: TopicNames) -> None:
    """A setting the model rejects is named by its variable, with the value given, instead of a traceback."""
    env = _env(broker, database_url, topics.prefix) | {"SMOLIT_TOPIC_PARTITIONS": "many"}
    line = _one_error_line(_run(["run", "router"], **env))
    assert "invalid settings: SMOLIT_TOPIC_PARTITIONS" in line and "'many'" in line


@pytest.mark.parametrize("service", ["gateway", "learner"])
def test_services_that_cannot_share_work_refuse_instances(service: str) -> None:
    """`--instances 2` of the gateway or the learner is refused with the reason before anything starts."""
    line = _one_error_line(_run(["run", service, "--instances", "2"]))
    assert "is not supported" in line and (("SMOLIT_PORT" in line) if service == "gateway" else ("one learner" in line))
