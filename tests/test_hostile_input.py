"""Hostile input over real HTTP: too large, malformed, or odd bodies get 4xx, never 5xx."""
from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support.data import GOOD_ROW

LIMIT = 1_048_576  # server.max_body_bytes in config/mlguard.yaml
ROW = json.dumps(GOOD_ROW)


def _post(server, body: bytes, path: str = "/predict", **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}", content=body, headers={"content-type": "application/json", **headers}, timeout=30
    )


def _chunks(body: bytes, size: int = 65_536) -> Iterator[bytes]:
    # A generator body has no Content-Length: httpx sends it chunked.
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _padded(size: int) -> bytes:
    """A valid row padded with JSON whitespace to exactly `size` bytes."""
    return ROW.encode() + b" " * (size - len(ROW))


def test_body_over_the_limit_is_413(server) -> None:
    r = _post(server, _padded(LIMIT + 1))
    assert r.status_code == 413, r.text
    assert str(LIMIT) in r.json()["error"]


def test_body_at_the_limit_is_answered(server) -> None:
    r = _post(server, _padded(LIMIT))
    assert r.status_code == 200, r.text
    assert r.json()["route"] == "model"


def test_streamed_body_over_the_limit_is_413(server) -> None:
    r = httpx.post(
        f"{server.url}/predict", content=_chunks(_padded(LIMIT + 1)),
        headers={"content-type": "application/json"}, timeout=30,
    )
    assert r.status_code == 413, r.text
    assert "streamed" in r.json()["error"]


def test_streamed_body_under_the_limit_is_answered(server) -> None:
    r = httpx.post(
        f"{server.url}/predict", content=_chunks(_padded(200_000)),
        headers={"content-type": "application/json"}, timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["route"] == "model"


def test_oversized_body_to_the_admin_app_is_413_too(server) -> None:
    r = _post(server, b"{" + b" " * LIMIT + b"}", path="/admin/routing")
    assert r.status_code == 413


def test_batch_over_its_maximum_is_400(server) -> None:
    body = json.dumps({"applications": [GOOD_ROW] * 1001}).encode()
    assert len(body) < LIMIT  # so it is the batch limit that refuses it, not the body limit
    r = _post(server, body, path="/predict_batch")
    assert r.status_code == 400, r.text
    assert "1000" in r.json()["error"]


HOSTILE = {
    "NaN literal": ROW.replace('"income": 129.0', '"income": NaN'),
    "Infinity literal": ROW.replace('"income": 129.0', '"income": Infinity'),
    "-Infinity literal": ROW.replace('"income": 129.0', '"income": -Infinity'),
    "float overflowing to inf": ROW.replace('"income": 129.0', '"income": 1e400'),
    "huge integer": ROW.replace('"age": 30', '"age": ' + "9" * 5000),
    "huge integer in a float field": ROW.replace('"income": 129.0', '"income": ' + "9" * 5000),
    "integer past int64": ROW.replace('"age": 30', '"age": 99999999999999999999'),
    "nested objects 100k deep": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "nested arrays 100k deep": "[" * 100_000 + "]" * 100_000,
    "deep value in a field": ROW.replace('"home": "rent"', '"home": ' + "[" * 5000 + "]" * 5000),
    "lone surrogate escape": ROW.replace('"rent"', '"\\ud800"'),
    "invalid UTF-8": ROW.replace("rent", "\udcff\udcfe"),
    "truncated JSON": ROW[:-5],
    "duplicate-free garbage": "\x00\x01\x02",
    "empty body": "",
    "a JSON string": '"hello"',
    "a JSON array": "[1, 2, 3]",
    "a bool for a number": ROW.replace('"age": 30', '"age": true'),
    "a numeric string": ROW.replace('"age": 30', '"age": "30"'),
    "fullwidth digits": ROW.replace('"age": 30', '"age": "３０"'),
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_json_is_400(server, body: str) -> None:
    r = _post(server, body.encode("utf-8", "surrogateescape"))
    assert r.status_code == 400, r.text
    assert "error" in r.json()


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_json_in_a_batch_is_400(server, body: str) -> None:
    wrapped = '{"applications": [' + body + "]}"
    r = _post(server, wrapped.encode("utf-8", "surrogateescape"), path="/predict_batch")
    assert r.status_code == 400, r.text


ODD_BUT_VALID = ["\u0000", "\U0001f600", "\u202erent", "r\u0301ent", "ｒｅｎｔ", "\ufeffrent", "a" * 10_000]


@pytest.mark.parametrize("home", ODD_BUT_VALID, ids=lambda s: repr(s[:12]))
def test_odd_but_valid_unicode_in_a_category_goes_to_the_rules(server, home: str) -> None:
    # Well-formed text is data, not an attack: an unseen category is the input checks' business.
    r = _post(server, json.dumps({**GOOD_ROW, "home": home}).encode())
    assert r.status_code == 200, r.text
    assert r.json()["route"] == "heuristic"
    assert r.json()["reasons"] == ["input.unknown_category:home"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
     "multipart/form-data; boundary=x", "application/vnd.bentoml+pickle", "application/octet-stream"],
)
def test_bodies_that_are_not_json_are_415(server, content_type: str) -> None:
    # BentoML would parse multipart itself and answer a malformed one with a 500.
    for body in (ROW.encode(), b"\xff\xfe garbage"):
        r = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": content_type})
        assert r.status_code == 415, (content_type, body[:20], r.status_code, r.text)


@pytest.mark.parametrize("headers", [{"content-type": "application/json; charset=utf-8"}, {}])
def test_json_with_parameters_or_without_a_content_type_is_answered(server, headers: dict) -> None:
    r = httpx.post(f"{server.url}/predict", content=ROW.encode(), headers=headers)
    assert r.status_code == 200, r.text


def test_unicode_field_names_are_400(server) -> None:
    r = _post(server, json.dumps({**GOOD_ROW, "\u202eage": 30}).encode())
    assert r.status_code == 400
