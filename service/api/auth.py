"""Bearer tokens for the HTTP surfaces that are not public: one check, three tokens.

| token (environment variable) | guards                                                      |
|------------------------------|-------------------------------------------------------------|
| `MLGUARD_ADMIN_TOKEN`        | admin writes (POST /admin/routing), DELETE /predictions/{id} |
| `MLGUARD_MONITORING_TOKEN`   | reads of live customers' data: /monitoring/drift/report,     |
|                              | /monitoring/performance, GET /predictions/{id} (the admin    |
|                              | token is accepted there too)                                 |
| `MLGUARD_FEEDBACK_TOKEN`     | POST /feedback                                               |

No token configured for an endpoint: it is disabled (403), so a forgotten variable never leaves
it open. A missing or wrong `Authorization: Bearer <token>`: 401 with `WWW-Authenticate: Bearer`.
Both bodies name the variable to set. Tokens are read from the environment once, when the app
is built (a token change needs a restart, like any secret mounted as an environment variable).

    auth = monitoring_auth()
    Route("/performance", auth.protect(performance), methods=["GET"])
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

ADMIN_TOKEN_ENV = "MLGUARD_ADMIN_TOKEN"
MONITORING_TOKEN_ENV = "MLGUARD_MONITORING_TOKEN"
FEEDBACK_TOKEN_ENV = "MLGUARD_FEEDBACK_TOKEN"

Endpoint = Callable[[Request], Awaitable[Response]]


def _digest(secret: str) -> bytes:
    # Compared as fixed-length digests: compare_digest on the raw strings would still tell the
    # token's length by how soon it returns.
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class BearerAuth:
    """Who may call a group of endpoints: any of the tokens of `accepted`.

    `accepted` maps each environment variable to its value ("" when it is not set), the one to
    set first: the error bodies name it. Build it with `from_env` (or a helper below) when the
    app is built; a test may pass the values directly.
    """

    what: str  # what the token opens, for the error bodies: "admin writes", "monitoring reads"
    accepted: Mapping[str, str]
    _digests: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Stripped as the request's token is: a secret file's trailing newline must not make a
        # token that can never match, nor a blank one count as configured.
        digests = tuple(_digest(v.strip()) for v in self.accepted.values() if v.strip())
        object.__setattr__(self, "_digests", digests)

    @classmethod
    def from_env(
        cls, what: str, *names: str, environ: Mapping[str, str] | None = None
    ) -> BearerAuth:
        env = os.environ if environ is None else environ
        return cls(what, {name: env.get(name, "") for name in names})

    def _names(self) -> str:
        first, *others = self.accepted
        return first + (f" (or {' or '.join(others)})" if others else "")

    def refusal(self, request: Request) -> JSONResponse | None:
        """The 403 or 401 answer for this request, or None when its token is right."""
        if not self._digests:
            return JSONResponse(
                {"error": f"{self.what} are disabled: set {self._names()} in the server's environment"},
                status_code=403,
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given_digest = _digest(given.strip())
        # Every accepted token is compared, none skipped on a match: the time taken must tell
        # neither how much of a token was right nor which one it was.
        matches = [hmac.compare_digest(given_digest, d) for d in self._digests]
        if scheme.lower() != "bearer" or not any(matches):
            return JSONResponse(
                {"error": "missing or wrong bearer token: send `Authorization: Bearer <token>` "
                          f"with the value of {self._names()}"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def protect(self, endpoint: Endpoint) -> Endpoint:
        """`endpoint`, answered only for a right token (checked before the body is read)."""

        @functools.wraps(endpoint)
        async def protected(request: Request) -> Response:
            refused = self.refusal(request)
            return refused if refused is not None else await endpoint(request)

        return protected


def admin_auth(environ: Mapping[str, str] | None = None) -> BearerAuth:
    """Admin writes and deletions: `MLGUARD_ADMIN_TOKEN` only."""
    return BearerAuth.from_env("admin writes", ADMIN_TOKEN_ENV, environ=environ)


def monitoring_auth(environ: Mapping[str, str] | None = None) -> BearerAuth:
    """Reads of live customers' data: `MLGUARD_MONITORING_TOKEN`, or the admin token."""
    return BearerAuth.from_env(
        "monitoring reads", MONITORING_TOKEN_ENV, ADMIN_TOKEN_ENV, environ=environ
    )


def feedback_auth(environ: Mapping[str, str] | None = None) -> BearerAuth:
    """Outcomes sent to POST /feedback: `MLGUARD_FEEDBACK_TOKEN` only."""
    return BearerAuth.from_env("feedback writes", FEEDBACK_TOKEN_ENV, environ=environ)
