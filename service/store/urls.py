"""Parsing `store.url`: which database a prediction store talks to."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A parsed store URL: the dialect and what its driver needs to connect."""

    dialect: str  # SQLITE or POSTGRESQL
    target: str  # SQLite: the database file's path; PostgreSQL: the libpq URI as given

    def display(self) -> str:
        """The URL without its password: safe for logs and error messages."""
        if self.dialect == SQLITE:
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def parse_store_url(url: str) -> StoreUrl:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db` or `postgresql://user@host:port/db`.

    SQLite paths follow SQLAlchemy's convention: three slashes, then the path (relative to the
    working directory unless it starts with a fourth slash).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"store.url {url!r} has no scheme: use sqlite:///path or postgresql://")
    scheme = scheme.lower()
    if scheme == SQLITE:
        if not rest.startswith("/") or len(rest) < 2:
            raise ValueError(f"store.url {url!r}: a SQLite URL is sqlite:///path/to/file.db")
        path = rest[1:]
        if path == ":memory:":
            # Each worker process would log into a private database nobody else can read.
            raise ValueError("store.url: an in-memory SQLite database cannot be shared; use a file")
        return StoreUrl(SQLITE, str(Path(path)))
    if scheme in ("postgresql", "postgres"):
        return StoreUrl(POSTGRESQL, url)
    raise ValueError(f"store.url {url!r}: unsupported scheme {scheme!r} (sqlite or postgresql)")
