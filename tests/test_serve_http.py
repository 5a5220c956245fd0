"""``dhen-cvr serve`` as a real uvicorn process on loopback, over real HTTP: scores equal
the in-process model, bad requests are 422s naming the field, long sequences are
trimmed, the body size is bounded, every request is logged as JSON, SIGTERM is graceful."""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from dhen_cvr.serve.artefact import ServingModel, load_serving_model
from dhen_cvr.serve.encode import encode_request
from dhen_cvr.serve.schema import RequestSchema
from serve_world import Server, data_rows, request_from_rows, served_world

# The shared run + artefact (serve_world.served_world) takes ~1-2 min to build once.
pytestmark = pytest.mark.slow

MAX_CANDIDATES = 50


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server(
        served_world().artefact,
        "--max-candidates",
        str(MAX_CANDIDATES),
        "--max-body-bytes",
        "200000",
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def eager() -> ServingModel:
    return load_serving_model(served_world().run)


@pytest.fixture(scope="module")
def body(eager: ServingModel) -> dict[str, Any]:
    rows = data_rows(served_world().world, 3, 12)
    return request_from_rows(eager.spec, rows[4], rows)


def _post(server: Server, body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/score", json=body, timeout=30)


def test_score_equals_the_in_process_model(
    server: Server, eager: ServingModel, body: dict[str, Any]
) -> None:
    response = _post(server, body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["heads"] == ["checkout", "add_to_cart", "signup"]
    assert out["request_time"] == body["request_time"] and len(out["scores"]) == 12
    got = torch.tensor(
        [[row[h] for h in out["heads"]] for row in out["scores"]], dtype=torch.float64
    )
    schema = RequestSchema(eager.spec, MAX_CANDIDATES)
    inputs = encode_request(eager.spec, schema.dump(schema.model.model_validate(body)))
    torch.testing.assert_close(got, eager.request(*inputs).double(), rtol=1e-5, atol=1e-6)


def test_health_and_metadata(server: Server) -> None:
    health = httpx.get(server.url + "/healthz").json()
    meta = httpx.get(server.url + "/metadata").json()
    assert health["status"] == "ok" and health["model_version"] == meta["model_version"]
    assert meta["heads"] == ["checkout", "add_to_cart", "signup"]
    assert meta["max_candidates"] == MAX_CANDIDATES
    assert [s["name"] for s in meta["spec"]["features"] if s["role"] == "sequence"]
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/score" in schema["paths"] and "Candidate" in schema["components"]["schemas"]


def test_a_sequence_longer_than_the_cut_is_trimmed_not_refused(
    server: Server, body: dict[str, Any]
) -> None:
    """The world's sequences hold up to 24 items, the model's cut is 16: the full request
    scores the same as one holding only each sequence's newest 16 items plus the item
    before them (whose timestamp gives the oldest kept item its gap feature)."""
    sequences = body["user"]["sequences"]
    assert max(len(s["timestamps"]) for s in sequences.values()) > 17
    cut = copy.deepcopy(body)
    for items in cut["user"]["sequences"].values():
        for key in items:
            items[key] = items[key][-17:]
    full, trimmed = _post(server, body).json(), _post(server, cut).json()
    assert full["scores"] != []
    for a, b in zip(full["scores"], trimmed["scores"], strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def _bad(body: dict[str, Any], kind: str) -> dict[str, Any]:
    bad = copy.deepcopy(body)
    if kind == "unknown feature":
        bad["candidates"][2]["no_such_feature"] = 1
    elif kind == "wrong type":
        bad["user"]["features"]["user_age"] = "thirty"
    elif kind == "too many candidates":
        bad["candidates"] = bad["candidates"] * 5  # 60 > 50
    elif kind == "timestamp after the request time":
        bad["user"]["sequences"]["org"]["timestamps"][-1] = bad["request_time"] + 5
    elif kind == "missing candidate feature":
        del bad["candidates"][3]["ad_id"]
    elif kind == "ragged sequence":
        bad["user"]["sequences"]["ads"]["ads_item"].append(1)
    elif kind == "wrong vector size":
        bad["candidates"][0]["ad_emb"] = bad["candidates"][0]["ad_emb"][:-1]
    return bad


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("unknown feature", "no_such_feature"),
        ("wrong type", "user_age"),
        ("too many candidates", "candidates"),
        ("timestamp after the request time", "user.sequences.org.timestamps"),
        ("missing candidate feature", "candidates[3].ad_id"),
        ("ragged sequence", "user.sequences.ads.ads_item"),
        ("wrong vector size", "ad_emb"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    server: Server, body: dict[str, Any], kind: str, names: str
) -> None:
    response = _post(server, _bad(body, kind))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    text = " ".join(".".join(map(str, d["loc"])) + " " + d["msg"] for d in detail)
    assert names in text, text


def test_nan_is_a_422(server: Server, body: dict[str, Any]) -> None:
    bad = copy.deepcopy(body)
    bad["user"]["features"]["user_age"] = float("nan")
    raw = json.dumps(bad)  # Python writes a bare NaN, as a careless client would
    assert "NaN" in raw
    response = httpx.post(
        server.url + "/v1/score", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "user_age" in response.text


def test_a_body_over_the_limit_is_413(server: Server, body: dict[str, Any]) -> None:
    huge = copy.deepcopy(body)
    huge["user"]["features"]["padding"] = "x" * 300_000
    response = _post(server, huge)
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


def test_every_request_is_logged_as_one_json_line(server: Server, body: dict[str, Any]) -> None:
    _post(server, body)
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    scored = [r for r in lines if r["path"] == "/v1/score" and r["status"] == 200]
    assert scored and scored[-1]["candidates"] == 12 and scored[-1]["ms"] > 0
    assert {r["status"] for r in lines} >= {200, 422}


def test_schemathesis_finds_no_server_error(server: Server) -> None:
    """Property-based requests from the OpenAPI schema (coverage and fuzzing phases):
    every one answered, none with a 5xx."""
    schemathesis = shutil.which("schemathesis") or str(
        Path(sys.executable).with_name("schemathesis")
    )
    done = subprocess.run(
        [
            schemathesis,
            "run",
            server.url + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated and generated[1] == generated[2] and int(generated[1]) > 100, done.stdout


def test_sigterm_shuts_down_gracefully(server: Server) -> None:
    """Last in this file: stops the module's server. uvicorn drains, logs its shutdown,
    then re-raises the signal, so the exit status is SIGTERM's (the shell's 143)."""
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert server.stop() == -signal.SIGTERM
    out = server.output()
    assert "Shutting down" in out and "Finished server process" in out
