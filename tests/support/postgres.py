"""A fresh PostgreSQL database per test, on the machine's shared server, dropped afterwards.

The shared server (postgresql://postgres@127.0.0.1:5432, trust auth) is never stopped or
reconfigured: each test gets a database with a unique name and drops it, terminating any
connection still open on it first. `MLGUARD_TEST_POSTGRES` points elsewhere if needed.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ADMIN_URL = os.environ.get("MLGUARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    """The admin URL pointed at database `name`."""
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def via_port(url: str, port: int) -> str:
    """The same database reached through 127.0.0.1:`port` (a proxy in front of the server)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@contextmanager
def fresh_database(prefix: str = "mlguard_test", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create an empty database with a unique name; yields its URL; drops it on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(name, admin_url)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_address(admin_url: str = ADMIN_URL) -> tuple[str, int]:
    """The shared server's host and port, for a proxy in front of it."""
    parts = urlsplit(admin_url)
    return parts.hostname or "127.0.0.1", parts.port or 5432
