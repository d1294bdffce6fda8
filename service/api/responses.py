"""JSON answers encoded by pydantic-core, in one body message.

Starlette's `JSONResponse` refuses NaN and infinities (a 500), and BentoML's response for a
declared model sends three ASGI messages, each through every middleware. Here NaN and
infinities go out as null, as pydantic's own encoding of an answer has them.
"""
from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import Response


def json_response(body: Any, status_code: int = 200) -> Response:
    return Response(to_json(body, inf_nan_mode="null"), status_code=status_code,
                    media_type="application/json")
