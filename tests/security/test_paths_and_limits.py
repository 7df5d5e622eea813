"""Paths in a job spec and request sizes, through the real API of a real server (the engine's own stage
schemas, no worker). Dataset, parent, checkpoint and output paths must resolve inside the data roots:
`..`, absolute paths elsewhere, `~`, symlinks (a file, a directory, a parent directory) that lead out,
symlink loops, over-long names and NUL bytes are each a 422 naming the field, and a refused request
changes nothing stored. Bodies over TINYFORGE_MAX_BODY_BYTES are a 413, declared or chunked."""
from __future__ import annotations

import os
import sqlite3

import httpx
import pytest

from security_fixtures import Service, data_home

LIMIT = 1 << 20  # the default TINYFORGE_MAX_BODY_BYTES
SOURCES = ["body", "stages", 0, "config", "data", "sources", 0]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paths")
    home, outside = data_home(tmp, "hello world\n" * 20)
    (home / "escape").symlink_to(outside)  # a directory link leading out
    (home / "escape.txt").symlink_to(outside / "secret.txt")  # a file link leading out
    (home / "up").symlink_to(tmp)  # a parent-directory link: home/up/outside/... is outside
    (home / "inner").symlink_to(home / "corpus")  # a link that stays inside: fine
    (home / "loop").symlink_to(home / "loop")
    svc = Service(home, f"sqlite:///{tmp / 'tinyforge.db'}", TINYFORGE_STAGE_SPECS="engine.spec:STAGE_SPECS")
    yield svc, home, outside, tmp
    svc.close()


def train(source: str, **data) -> dict:
    return {"name": "paths", "stages": [{"kind": "train", "config": {
        "model": {"preset": "micro"}, "data": {"sources": [source], **data}, "steps": 2}}]}


def snapshot(svc, tmp) -> tuple:
    """Every row of every table, and every file outside the server's home."""
    conn = sqlite3.connect(svc.db_url.split("///", 1)[1])
    try:
        rows = "\n".join(conn.iterdump())
    finally:
        conn.close()
    files = sorted(str(p) for p in (tmp / "outside").rglob("*"))
    return rows, files, (tmp / "outside" / "secret.txt").read_text()


def refused(svc, body: dict, loc: list, path: str = "/v1/jobs", **headers) -> dict:
    r = svc.http.post(path, json=body, headers=headers)
    assert r.status_code == 422, (loc, r.status_code, r.text)
    items = {tuple(e["loc"]): e for e in r.json()["errors"]}
    assert tuple(loc) in items, (loc, r.text)
    e = items[tuple(loc)]
    assert e["field"] == ".".join(map(str, loc[1:])) and e["type"] in ("path_error", "string_unstorable"), e
    return e


def test_paths_inside_the_roots_are_accepted_and_stored_resolved(env):
    svc, home, _, _ = env
    job = svc.submit(train(str(home / "inner" / "a.txt"), cache_dir=str(home / "new-cache")))
    config = svc.job(job["id"])["stages"][0]["config"]
    assert config["data"]["sources"] == [str((home / "corpus" / "a.txt").resolve())]  # the link is resolved
    assert config["data"]["cache_dir"] == str((home / "new-cache").resolve())  # an output may be new


def test_paths_leading_out_of_the_roots_are_refused_and_nothing_changes(env):
    svc, home, outside, tmp = env
    kept = svc.submit(train(str(home / "corpus")), key="paths-key")
    before = snapshot(svc, tmp)
    escapes = {
        "absolute elsewhere": str(outside / "secret.txt"),
        "system file": "/etc/hostname",
        "dot-dot from a root": str(home / "corpus" / ".." / ".." / "outside" / "secret.txt"),
        "dot-dot relative": "../../../../../../etc/hostname",
        "relative to the server's directory": "pyproject.toml",
        "home of the server's user": "~/.bashrc",
        "home of another user": "~nosuchuser/x",
        "file symlink": str(home / "escape.txt"),
        "directory symlink": str(home / "escape" / "secret.txt"),
        "symlinked parent": str(home / "up" / "outside" / "secret.txt"),
        "symlink loop": str(home / "loop" / "x"),
        "name too long": str(home / ("a" * 300)),
        "NUL byte": str(home / "corpus") + "\x00/../../outside",
        "missing input": str(home / "corpus" / "nope.txt"),
    }
    for what, value in escapes.items():
        e = refused(svc, train(value), SOURCES)
        assert str(outside / "secret.txt") not in e["msg"] or "outside the data roots" in e["msg"], (what, e)
    # the same through the other path-like keys: an output directory, an init checkpoint, an inherit parent
    refused(svc, train(str(home / "corpus"), cache_dir=str(outside / "cache")), SOURCES[:-2] + ["cache_dir"])
    refused(svc, train(str(home / "corpus"), cache_dir=str(home / "escape" / "new")), SOURCES[:-2] + ["cache_dir"])
    body = train(str(home / "corpus"))
    body["stages"][0]["config"]["init"] = {"checkpoint": str(home / "escape")}
    refused(svc, body, ["body", "stages", 0, "config", "init", "checkpoint"])
    refused(svc, {"name": "p", "stages": [{"kind": "inherit", "config": {"parent": str(home / "up")}}]},
            ["body", "stages", 0, "config", "parent"])
    # a recipe: the wired stages name the section the path reached them through
    r = svc.http.post("/v1/jobs", json={"name": "p", "recipe": {"data": {"sources": [str(home / "escape")]},
                                                                "parent": {"checkpoint": "/etc"}}})
    assert r.status_code == 422, r.text
    paths = {tuple(e["loc"]) for e in r.json()["errors"] if e["type"] == "path_error"}
    assert {("body", "recipe", "tokenizer", "sources", 0), ("body", "recipe", "round1", "data", "sources", 0),
            ("body", "recipe", "inherit", "parent")} <= paths, r.text
    # the planner refuses the same, and a refused body does not take over a used idempotency key
    refused(svc, train(str(home / "escape.txt")), SOURCES, path="/v1/jobs:plan")
    r = svc.http.post("/v1/jobs", json=train(str(home / "escape.txt")), headers={"Idempotency-Key": "paths-key"})
    assert r.status_code == 409 and kept["id"] in r.text, r.text  # the key is taken by another body
    refused(svc, train(str(home / "escape.txt")), SOURCES, **{"Idempotency-Key": "fresh-key"})
    assert snapshot(svc, tmp) == before
    assert svc.submit(train(str(home / "corpus")), key="paths-key", expect=200)["id"] == kept["id"]


def test_numbers_and_filters_that_used_to_be_5xx(env):
    svc = env[0]
    # 1e999 parses to infinity: stored, it made GET /v1/jobs/{id} a 500 (no JSON answer can carry it)
    r = svc.http.post("/v1/jobs", content=b'{"name": "inf", "stages": [{"kind": "train", "config": {"optim": '
                                          b'{"lr": 1e999}}}]}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "1e999" in r.text, r.text
    # thousands of label filters are thousands of subqueries: past SQLite's expression limit, a 503
    r = svc.http.get("/v1/jobs", params=[("label", f"k{i}") for i in range(1100)])
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "label", r.text
    assert svc.http.get("/v1/jobs", params=[("label", f"k{i}") for i in range(50)]).status_code == 200


def _chunks(data: bytes, size: int = 64 * 1024):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs:plan", "/v1/tokens"])
def test_bodies_over_the_limit_are_413_declared_or_chunked(env, path):
    svc, _, _, tmp = env
    before = snapshot(svc, tmp)
    h = {**svc.http.headers, "content-type": "application/json"}
    over = b'{"name": "' + b"x" * LIMIT + b'"}'
    at = b'{"name": "' + b"x" * (LIMIT - 12) + b'"}'  # exactly the limit: read, then refused as a spec
    assert len(at) == LIMIT
    with httpx.Client(base_url=svc.url, headers=h, timeout=60) as c:
        r = c.post(path, content=over)  # Content-Length says it all: refused before reading
        assert r.status_code == 413 and r.json()["errors"][0]["type"] == "too_large", r.text
        r = c.post(path, content=_chunks(over))  # chunked: counted while reading
        assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
        assert r.status_code == 413 and r.json()["errors"][0]["type"] == "too_large", r.text
        for body in (at, _chunks(at)):
            r = c.post(path, content=body)
            assert r.status_code == 422, r.text[:300]
        assert c.get("/healthz").status_code == 200
    assert snapshot(svc, tmp) == before


def test_no_upload_endpoint_takes_files(env):
    """Jobs point at data already inside a root; nothing takes a multipart upload."""
    spec = httpx.get(env[0].url + "/openapi.json", timeout=30).json()
    for p, methods in spec["paths"].items():
        for m, op in methods.items():
            content = op.get("requestBody", {}).get("content", {})
            assert not {"multipart/form-data", "application/octet-stream"} & set(content), (m, p)
    assert os.environ.get("TINYFORGE_MAX_BODY_BYTES") in (None, str(LIMIT))
