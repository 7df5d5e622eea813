"""End to end with the real engine commands: `POST /v1/jobs` -> a worker -> `tinyforge <kind>`
subprocesses -> succeeded. Slow (real training on CPU); they run in CI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.service import REPO, Service

REAL_ENGINE = {"TINYFORGE_STAGE_SPECS": "engine.spec:STAGE_SPECS",
               "TINYFORGE_ENGINE_COMMAND": f"{sys.executable} -m tinyforge.cli",
               "TINYFORGE_LEASE_S": "60", "TINYFORGE_CANCEL_GRACE_S": "30"}


@pytest.fixture
def real_service(tmp_path):
    with Service.on_sqlite(tmp_path, embedded_worker=True, **REAL_ENGINE) as svc:
        yield svc


@pytest.mark.slow
def test_train_then_export_with_the_real_engine(real_service):
    spec = yaml.safe_load((REPO / "examples" / "train-export.yaml").read_text())
    job = real_service.submit(spec, key="e2e-train-export")
    done = real_service.wait(job["id"], timeout=600)
    logs = real_service.http.get(f"/v1/jobs/{job['id']}/logs", params={"limit": 10000}).json()["lines"]
    assert done["status"] == "succeeded", (done, [x["line"] for x in logs][-40:])
    train, export = done["stages"]
    arts = {a["name"]: a for a in real_service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    assert export["resolved_config"]["checkpoint"] == arts["checkpoint"]["path"]
    assert arts["hf_model"]["type"] == "model" and (Path(arts["hf_model"]["path"]) / "config.json").exists()
    m = real_service.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss"}).json()
    splits = {s["split"] for s in m["series"] if s["stage"] == "train"}
    assert {"train", "val"} <= splits
    assert train["step"] == train["total_steps"] == 30
    lineage = real_service.http.get(f"/v1/stages/{export['id']}/lineage").json()
    assert {"from": train["id"], "to": export["id"], "role": "checkpoint"} in lineage["edges"]


@pytest.mark.slow
def test_recipe_runs_every_stage_to_succeeded(real_service):
    spec = yaml.safe_load((REPO / "examples" / "recipe.yaml").read_text())
    small = {"steps": 20, "micro_batch": 4, "seq_len": 64, "eval_every": 10, "eval_batches": 2, "checkpoint_every": 10,
             "log_every": 5}  # the example's stages, shortened: this test is about the service, not the model
    spec["recipe"]["parent"]["train"].update(small, model={"preset": "micro"})
    spec["recipe"]["inherit"].update(child={"n_layer": 1}, calib={"batches": 2, "seq_len": 64}, eval_batches=2)
    spec["recipe"]["round1"].update(small, model={"preset": "micro", "overrides": {"n_layer": 1}})
    spec["recipe"]["round2"].update(small, model={"preset": "micro", "overrides": {"n_layer": 1}}, steps=5)
    spec["recipe"]["eval"].update(batches=2)
    plan = real_service.http.post("/v1/jobs:plan", json=spec)
    assert plan.status_code == 200, plan.text
    job = real_service.submit(spec, key="e2e-recipe")
    done = real_service.wait(job["id"], timeout=1500)
    logs = real_service.http.get(f"/v1/jobs/{job['id']}/logs", params={"limit": 10000}).json()["lines"]
    assert done["status"] == "succeeded", (json.dumps(done, indent=1)[:4000], [x["line"] for x in logs][-60:])
    assert [s["name"] for s in done["stages"]] == ["tokenizer", "parent", "inherit", "round1", "round2", "export",
                                                   "eval"]
    assert all(s["status"] == "succeeded" for s in done["stages"])
    by = {s["name"]: s for s in done["stages"]}
    arts = {(a["stage"], a["name"]): a["path"] for a in real_service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    compact, id_map = arts[("tokenizer", "tokenizer")], arts[("tokenizer", "id_map")]
    assert by["round1"]["resolved_config"]["data"]["tokenizer"] == compact  # the compact tokenizer was used
    assert by["inherit"]["resolved_config"]["vocab"]["id_map"] == id_map
    assert by["parent"]["resolved_config"]["data"]["tokenizer"] == arts[("tokenizer", "large_tokenizer")]
    assert by["round2"]["resolved_config"]["init"]["checkpoint"] == arts[("round1", "checkpoint")]
    eval_run = done["stages"][-1]
    lineage = real_service.http.get(f"/v1/stages/{eval_run['id']}/lineage").json()
    names = {n.get("stage") for n in lineage["nodes"] if n["type"] == "stage"}
    assert {"tokenizer", "parent", "inherit", "round1", "round2"} <= names


@pytest.mark.slow
def test_pipeline_stages_with_the_real_engine(real_service):
    spec = yaml.safe_load((REPO / "examples" / "pipeline.yaml").read_text())
    job = real_service.submit(spec)
    done = real_service.wait(job["id"], timeout=1200)
    logs = real_service.http.get(f"/v1/jobs/{job['id']}/logs", params={"limit": 10000}).json()["lines"]
    assert done["status"] == "succeeded", (json.dumps(done, indent=1)[:4000], [x["line"] for x in logs][-60:])
    by = {s["name"]: s for s in done["stages"]}
    assert list(by) == ["parent", "inherit", "round1", "round2", "export", "eval"]
    assert by["round2"]["summary"]["val_loss"] > 0 and by["eval"]["summary"]["val_bpb"] > 0
    lineage = real_service.http.get(f"/v1/stages/{by['export']['id']}/lineage").json()
    chain = [("parent", "inherit"), ("inherit", "round1"), ("round1", "round2"), ("round2", "export")]
    names = {n["id"]: n.get("stage") for n in lineage["nodes"]}
    edges = {(names[e["from"]], names[e["to"]]) for e in lineage["edges"]}
    assert set(chain) <= edges and "eval" not in names.values()  # eval is a sibling of export, not below it
