"""`smolit keys create|list|revoke`: API keys for the gateway (stored hashed; the secret is printed once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from psycopg_pool import ConnectionPool
from rich.console import Console
from rich.table import Table

from smolit.infra.db import DatabaseUnreachable, migrate, open_pool
from smolit.infra.keys import KNOWN_SCOPES, KeyRequestError, KeyStore, parse_scopes
from smolit.infra.settings import load_settings

from .errors import SetupError
from .stack import running_database_url

console = Console(stderr=True)
out = Console()
keys_app = typer.Typer(no_args_is_help=True, help="API keys for the gateway (Authorization: Bearer).")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (setting SMOLIT_DATA_DIR).")]


def _store(data_dir: Path | None) -> tuple[KeyStore, ConnectionPool]:
    """The key table of SMOLIT_DATABASE_URL, or of the running `smolit up` in the data folder."""
    settings = load_settings(data_dir=data_dir)
    url = running_database_url(settings)
    try:
        migrate(url)  # the api_keys table may be newer than the running stack's schema
        pool = open_pool(url, 2)
    except (DatabaseUnreachable, psycopg.OperationalError) as exc:
        raise SetupError(f"database at {url.split('@')[-1]} is not reachable (SMOLIT_DATABASE_URL): {exc}") from exc
    return KeyStore(pool), pool


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help=f"Comma-separated scopes ({', '.join(KNOWN_SCOPES)}, or an agent's scope).")
    ] = "chat,feedback",
    agents: Annotated[
        str | None, typer.Option("--agents", help="Comma-separated agents the key may reach (default: all).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a key and print its secret once (only its SHA-256 is stored)."""
    try:
        parsed = parse_scopes(scopes)
        agent_list = tuple(dict.fromkeys(a.strip() for a in agents.split(",") if a.strip())) if agents else None
        store, pool = _store(data_dir)
        with pool:
            key, token = store.create(name, parsed, agent_list)
    except KeyRequestError as exc:
        raise SetupError(str(exc)) from exc
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "key_id": key.key_id,
                    "name": key.name,
                    "scopes": list(key.scopes),
                    "agents": list(key.agents) if key.agents else None,
                    "token": token,
                }
            )
        )
        return
    console.print(
        f"Created key [bold]{key.key_id}[/] ({key.name}), scopes {','.join(key.scopes)}"
        + (f", agents {','.join(key.agents)}" if key.agents else "")
    )
    console.print("The secret is shown only now; send it as `Authorization: Bearer <secret>`:")
    out.print(token, soft_wrap=True, highlight=False)


@keys_app.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json")] = False, data_dir: DataDir = None) -> None:
    """Every key (never the secrets): id, name, scopes, agents, created, revoked."""
    store, pool = _store(data_dir)
    with pool:
        keys = store.list()
    if as_json:
        rows = [
            {
                "key_id": k.key_id,
                "name": k.name,
                "scopes": list(k.scopes),
                "agents": list(k.agents) if k.agents else None,
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]
        out.print_json(json.dumps(rows))
        return
    table = Table("key id", "name", "scopes", "agents", "created", "revoked")
    for k in keys:
        table.add_row(
            k.key_id,
            k.name,
            ",".join(k.scopes),
            ",".join(k.agents) if k.agents else "all",
            f"{k.created_at:%Y-%m-%d %H:%M}" if k.created_at else "",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Key id from `smolit keys list`.")], data_dir: DataDir = None
) -> None:
    """Revoke a key; gateways refuse it within 5 seconds (their lookup cache)."""
    store, pool = _store(data_dir)
    with pool:
        if not store.revoke(key_id):
            raise SetupError(f"no active key with id {key_id!r}")
    console.print(f"Revoked key {key_id}")
