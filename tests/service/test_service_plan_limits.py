"""Absurd sizes are refused when a job is submitted or planned: a real `tinyforge serve` validating with the
engine's own schemas (engine.spec:STAGE_SPECS) answers 422 naming the field and the estimate that failed,
and stores nothing."""
from __future__ import annotations

import pytest

from tests.support.service import Service, stage


@pytest.fixture(scope="module")
def engine_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    svc = Service(home, f"sqlite:///{home / 'tinyforge.db'}", TINYFORGE_STAGE_SPECS="engine.spec:STAGE_SPECS",
                  TINYFORGE_MEMORY_LIMIT_GB="20")  # the largest worker's memory, as an operator would set it
    yield svc
    svc.close()


def refusal(response) -> dict:
    assert response.status_code == 422, response.text
    [item] = response.json()["errors"]
    return item


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs:plan"])
def test_a_million_sequence_micro_batch_is_refused_with_its_estimate(engine_api, path):
    spec = {"name": "huge", "stages": [stage("train", model={"preset": "micro"}, batch_size=1e6, micro_batch=1e6)]}
    item = refusal(engine_api.http.post(path, json=spec))
    assert item["field"] == "stages.0.config.micro_batch" and item["type"] == "size_limit"
    assert item["msg"].startswith("training memory estimate ") and " GiB (weights+optimizer " in item["msg"]
    assert "micro_batch=1000000" in item["msg"] and "batch_size=1000000" in item["msg"]
    assert "exceeds the limit 20.0 GiB (TINYFORGE_MEMORY_LIMIT_GB)" in item["msg"]


def test_paper_model_with_a_huge_micro_batch_is_refused(engine_api):
    def spec(micro_batch):  # an 80 GiB device declared: the model itself fits, 64 x 2048 tokens at once do not
        return {"name": "pangu", "stages": [stage("train", model={"preset": "pangu-pi-1.5b-pro"}, batch_size=64,
                                                  micro_batch=micro_batch, memory_limit_gb=80)]}
    item = refusal(engine_api.http.post("/v1/jobs:plan", json=spec(64)))
    assert item["field"] == "stages.0.config.micro_batch"
    assert "exceeds the limit 80.0 GiB (memory_limit_gb)" in item["msg"]
    estimate = float(item["msg"].split("training memory estimate ")[1].split(" GiB")[0])
    assert estimate > 200, item  # 19.5 GiB of weights and AdamW state + activations of 64 x 2048 tokens
    assert engine_api.http.post("/v1/jobs:plan", json=spec(1)).status_code == 200


def test_parameters_alone_over_the_limit_name_the_model(engine_api):
    spec = {"name": "wide", "stages": [stage("train", model={"preset": "micro", "overrides": {
        "n_layer": 400, "n_embd": 16384, "n_head": 64}})]}
    item = refusal(engine_api.http.post("/v1/jobs", json=spec))
    assert item["field"] == "stages.0.config.model" and "B parameters need " in item["msg"]
    assert "alone, over the limit 20.0 GiB" in item["msg"]


def test_an_explicit_memory_limit_wins_and_refusals_store_nothing(engine_api):
    job = {"name": "small", "stages": [stage("train", model={"preset": "micro"}, batch_size=64, micro_batch=64,
                                             memory_limit_gb=0.01)]}
    item = refusal(engine_api.http.post("/v1/jobs", json=job))
    assert item["field"] == "stages.0.config.micro_batch" and "(memory_limit_gb)" in item["msg"]
    assert engine_api.http.get("/v1/jobs").json()["items"] == []
