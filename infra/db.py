"""PostgreSQL access: one pool per process, pgvector registered, schema migrations applied in order."""

from __future__ import annotations

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool

EMBEDDING_DIM = 384


class DatabaseUnreachable(RuntimeError):
    """The database URL does not answer."""


class SchemaMismatch(RuntimeError):
    """The database schema is not the version this build of Smolit expects (older: migrate; newer: upgrade)."""


#: Ordered, append-only migrations. Never edit a released step; add a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE documents (
        id           bigserial PRIMARY KEY,
        collection   text NOT NULL,
        source       text NOT NULL,
        title        text,
        domain       text,
        content_hash text NOT NULL,
        metadata     jsonb NOT NULL DEFAULT '{}',
        ingested_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (collection, source)
    );
    CREATE TABLE chunks (
        id          bigserial PRIMARY KEY,
        document_id bigint NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        collection  text NOT NULL,
        chunk_index int NOT NULL,
        text        text NOT NULL,
        embedding   vector(384) NOT NULL
    );
    CREATE INDEX chunks_collection_idx ON chunks (collection);
    CREATE INDEX chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops);
    CREATE TABLE processed_events (
        consumer_group text NOT NULL,
        event_id       uuid NOT NULL,
        processed_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer_group, event_id)
    );
    CREATE TABLE requests (
        request_id      uuid PRIMARY KEY,
        conversation_id text NOT NULL,
        text            text NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        answered_at     timestamptz,
        outcome         jsonb
    );
    CREATE TABLE service_heartbeats (
        service   text NOT NULL,
        instance  text NOT NULL,
        pid       int NOT NULL,
        last_seen timestamptz NOT NULL DEFAULT now(),
        info      jsonb NOT NULL DEFAULT '{}',
        PRIMARY KEY (service, instance)
    );
    """,
    # 2: answers waiting for subanswers (agent-to-agent subqueries), so a restart does not lose them.
    """
    CREATE TABLE parked_tasks (
        parent_event_id uuid PRIMARY KEY,
        correlation_id  uuid NOT NULL,
        agent           text NOT NULL,
        parent          jsonb NOT NULL,
        draft           jsonb NOT NULL,
        deadline        timestamptz NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        result          jsonb,
        finished_by     text,
        finished_at     timestamptz,
        delivered       boolean NOT NULL DEFAULT false
    );
    CREATE INDEX parked_tasks_open_idx ON parked_tasks (deadline) WHERE result IS NULL;
    CREATE TABLE parked_subqueries (
        subquery_event_id uuid PRIMARY KEY,
        parent_event_id   uuid NOT NULL REFERENCES parked_tasks(parent_event_id) ON DELETE CASCADE,
        agent             text NOT NULL,
        answer            jsonb
    );
    CREATE INDEX parked_subqueries_parent_idx ON parked_subqueries (parent_event_id);
    """,
    # 3: feedback counts once per (request, user); anonymous feedback is user '' (once per request).
    """
    CREATE TABLE feedback (
        request_id uuid NOT NULL,
        user_key   text NOT NULL,
        event_id   uuid NOT NULL UNIQUE,
        rating     int NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (request_id, user_key)
    );
    """,
    # 4: conversations are the requests projection read per conversation, newest turns first.
    """
    CREATE INDEX requests_conversation_idx ON requests (conversation_id, created_at);
    """,
    # 5: API keys; only the SHA-256 of each token is stored (tokens are 256-bit random, see infra/keys.py).
    """
    CREATE TABLE api_keys (
        key_id      text PRIMARY KEY,
        name        text NOT NULL,
        token_hash  text NOT NULL UNIQUE,
        scopes      text[] NOT NULL,
        agents      text[],
        created_at  timestamptz NOT NULL DEFAULT now(),
        revoked_at  timestamptz
    );
    """,
    # 6: customers the `customer_lookup` agent tool reads (filled by the operator; empty by default).
    """
    CREATE TABLE customers (
        customer_id text PRIMARY KEY,
        name        text NOT NULL,
        segment     text,
        city        text,
        since       date
    );
    """,
)


def _configure(conn: psycopg.Connection) -> None:
    register_vector(conn)


def open_pool(url: str, max_size: int = 8, timeout_s: float = 10.0) -> ConnectionPool:
    """Open a pool with pgvector registered; raises DatabaseUnreachable with the address when it cannot connect."""
    check_database(url, timeout_s)
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        configure=_configure,
        kwargs={"autocommit": True},
        open=False,
    )
    pool.open(wait=True, timeout=timeout_s)
    return pool


def check_database(url: str, timeout_s: float = 5.0) -> None:
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(str(exc).strip().splitlines()[0]) from exc


def migrate(url: str) -> int:
    """Apply pending migrations in one transaction each; returns the schema version. Safe to run concurrently."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY)")
        for version, sql in enumerate(MIGRATIONS, start=1):
            with conn.transaction():
                # An advisory lock serialises concurrent starters; the version row makes each step run once.
                conn.execute("SELECT pg_advisory_xact_lock(4242)")
                done = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone()
                if done:
                    continue
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        return len(MIGRATIONS)


def schema_version(conn: psycopg.Connection) -> int:
    """Highest applied migration; 0 for a database Smolit has never migrated."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def check_schema(url: str, timeout_s: float = 5.0) -> int:
    """The schema version, if it is exactly the one this build migrates to; else SchemaMismatch saying what to do.

    Checked on a plain connection before any pool opens: the pool registers the pgvector type, which an
    unmigrated database does not have yet.
    """
    with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))) as conn:
        found = schema_version(conn)
    expected = len(MIGRATIONS)
    if found > expected:
        raise SchemaMismatch(
            f"database schema version {found} is newer than this build of Smolit knows ({expected}):"
            " upgrade Smolit or point it at a database of its own version"
        )
    if found < expected:
        raise SchemaMismatch(f"database schema version {found}, this build needs {expected}: run `smolit init`")
    return found
