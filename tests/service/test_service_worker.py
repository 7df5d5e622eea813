"""Workers running real stage subprocesses (fake_engine.py honours the engine contract), on SQLite and
PostgreSQL: references between stages, logs (SSE, resumable), metrics, artifacts, lineage, cancel
(SIGTERM, then SIGKILL), lease expiry -> resume, failure classes and restarts, webhooks."""
from __future__ import annotations

import base64
import io
import json
import signal
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.service import Service, stage


def running_at(step: int):
    return lambda j: j["status"] == "running" and (j.get("step") or 0) >= step


def sse(service, job_id: str, last_event_id: int | None = None) -> list[tuple[int | None, str, dict]]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    events, ev_id, ev, data = [], None, "message", ""
    with service.http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"}, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id:"):
                ev_id = int(line[3:])
            elif line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "" and data:
                events.append((ev_id, ev, json.loads(data)))
                ev_id, ev, data = None, "message", ""
    return events


def test_stages_run_in_order_and_everything_is_recorded(service):
    service.worker()
    job = service.submit({"name": "two", "stages": [
        stage("tokenizer", steps=3, artifacts=[{"name": "tokenizer", "type": "tokenizer"}], source=str(service.home)),
        stage("train", steps=30, step_time=0.01, lines=5, echo="${stages.tokenizer.artifacts.tokenizer}")]})
    done = service.wait(job["id"])
    assert done["status"] == "succeeded", done
    tok, train = done["stages"]
    assert [tok["status"], train["status"]] == ["succeeded", "succeeded"]
    assert train["step"] == train["total_steps"] == 30
    arts = service.http.get(f"/v1/jobs/{job['id']}/artifacts").json()
    tok_art = next(a for a in arts if a["stage"] == "tokenizer")
    assert train["summary"]["echo"] == tok_art["path"]  # the reference was resolved before the stage ran
    assert Path(tok_art["path"]).is_relative_to(Path(tok["run_dir"]))
    assert tok_art["stage_id"] == tok_art["run_id"] == tok["id"]  # run_id: the old name, one more release
    assert [(i["stage_id"], i["path"]) for i in train["inputs"] if i.get("ref")] == [(tok["id"], tok_art["path"])]

    # downloads: a file as is, a directory as a tar stream
    assert service.http.get(tok_art["download_url"]).content == b"tokenizer tokenizer"
    ckpt = next(a for a in arts if a["stage"] == "train")
    with tarfile.open(fileobj=io.BytesIO(service.http.get(ckpt["download_url"]).content)) as tar:
        assert "checkpoint/weights.bin" in tar.getnames()

    # metrics: every line once; downsampled on request
    m = service.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "stage": "train"}).json()
    train_loss = next(s for s in m["series"] if s["split"] == "train")
    assert [p[0] for p in train_loss["points"]] == list(range(1, 31))
    m = service.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss,lr", "max_points": 5}).json()
    assert {(s["stage"], s["key"], s["split"]) for s in m["series"]} >= {("train", "lr", "train"),
                                                                         ("train", "loss", "val")}
    for s in m["series"]:
        assert len(s["points"]) <= 5 and s["downsampled"] == (s["count"] > 5)

    # logs: all of both stages, in order, as SSE ending with `end`; resumable with Last-Event-ID
    events = sse(service, job["id"])
    assert events[-1][1] == "end" and events[-1][2]["job_status"] == "succeeded"
    lines = [e[2] for e in events if e[1] == "log"]
    text = [x["line"] for x in lines]
    assert "step 30 loss 0.3333" in text and "line 4" in text and "tokenizer: done" in text
    assert text.index("tokenizer: done") < text.index("step 30 loss 0.3333")
    ids = [e[0] for e in events if e[1] == "log"]
    assert ids == sorted(ids)
    resumed = [e[0] for e in sse(service, job["id"], last_event_id=ids[9]) if e[1] == "log"]
    assert resumed == ids[10:]

    # lineage: tokenizer -> train, and the tokenizer's own input path
    lin = service.http.get(f"/v1/stages/{train['id']}/lineage").json()
    assert {"from": tok["id"], "to": train["id"], "role": "echo"} in lin["edges"]
    assert any(n["type"] == "path" and n["path"] == str(service.home) for n in lin["nodes"])
    assert {n["id"] for n in lin["nodes"] if n["type"] == "stage"} == {tok["id"], train["id"]}
    assert lin["stage_id"] == lin["run_id"] == train["id"]
    assert service.http.get(f"/v1/runs/{train['id']}/lineage").json() == lin  # the old path, one more release

    types = [e["type"] for e in service.http.get(f"/v1/jobs/{job['id']}/events").json()]
    assert types == ["submitted", "started", "stage_started", "stage_succeeded", "stage_started",
                     "stage_succeeded", "succeeded"]


def test_cancel_sends_sigterm_and_the_job_ends_cancelled(service):
    service.worker()
    job = service.submit({"name": "long", "stages": [stage(steps=10_000, step_time=0.02)]})
    service.wait(job["id"], running_at(5))
    t0 = time.time()
    assert service.http.post(f"/v1/jobs/{job['id']}:cancel").json()["cancel_requested"] is True
    done = service.wait(job["id"], timeout=20)
    assert done["status"] == "cancelled" and time.time() - t0 < 3  # well inside the grace period
    attempt = done["attempts"][-1]
    assert attempt["status"] == "cancelled" and attempt["exit_code"] == 143
    assert done["stages"][0]["status"] == "cancelled"
    lines = service.http.get(f"/v1/jobs/{job['id']}/logs", params={"stream": "stderr"}).json()["lines"]
    assert any("stopped by SIGTERM" in x["line"] for x in lines)
    step = int(next(x for x in lines if "stopped by SIGTERM" in x["line"])["line"].split("at step ")[1].split()[0])
    assert (Path(done["stages"][0]["run_dir"]) / "checkpoints" / f"step_{step:08d}" / "manifest.json").exists()


def test_cancel_kills_a_stage_that_ignores_sigterm(service):
    service.worker()
    job = service.submit({"name": "stubborn", "stages": [stage(steps=10_000, step_time=0.02, ignore_sigterm=True)]})
    service.wait(job["id"], running_at(3))
    t0 = time.time()
    service.http.post(f"/v1/jobs/{job['id']}:cancel")
    done = service.wait(job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.time() - t0 >= 3  # TINYFORGE_CANCEL_GRACE_S
    assert done["attempts"][-1]["exit_code"] == 137
    lines = service.http.get(f"/v1/jobs/{job['id']}/logs", params={"stream": "system"}).json()["lines"]
    assert any("sent SIGKILL" in x["line"] for x in lines)


def test_expired_lease_requeues_and_the_next_attempt_resumes(service):
    first = service.worker("w-doomed")
    job = service.submit({"name": "resume", "stages": [stage(steps=40, step_time=0.05, checkpoint_every=5)]})
    service.wait(job["id"], running_at(12))
    first.send_signal(signal.SIGKILL)  # no goodbye: the lease has to expire
    first.wait()
    service.worker("w-heir")
    done = service.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    a1, a2 = done["attempts"]
    assert (a1["status"], a1["worker_id"], a1["failure_class"]) == ("lost", "w-doomed", "infra")
    assert (a2["status"], a2["worker_id"]) == ("succeeded", "w-heir")
    assert done["restarts"] == 1
    starts = done["stages"][0]["summary"]["starts"]
    assert starts[0] == [1, 0] and starts[-1][0] == 2 and starts[-1][1] >= 10  # resumed, same run directory
    # every metrics line exactly once, across both attempts
    m = service.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "split": "train",
                                                                  "max_points": 1000}).json()
    assert [p[0] for p in m["series"][0]["points"]] == list(range(1, 41))
    types = [e["type"] for e in service.http.get(f"/v1/jobs/{job['id']}/events").json()]
    assert "requeued" in types and types[-1] == "succeeded"


def test_failure_classes_and_restarts(service):
    service.worker()
    user = service.submit({"name": "bad-config", "stages": [stage(exit_code=2)]})
    flaky = service.submit({"name": "flaky", "resources": {"max_restarts": 2},
                            "stages": [stage(exit_code=3, fail_attempts=1, fail_at=7, steps=10, checkpoint_every=5)]})
    broken = service.submit({"name": "broken", "resources": {"max_restarts": 1}, "stages": [stage(exit_code=3)]})
    u = service.wait(user["id"])
    assert (u["status"], u["failure_class"], len(u["attempts"])) == ("failed", "user", 1)
    assert "exited 2: error: failing on purpose" in u["failure_reason"]
    f = service.wait(flaky["id"])
    assert f["status"] == "succeeded" and f["restarts"] == 1
    assert [(a["status"], a["failure_class"]) for a in f["attempts"]] == [("failed", "infra"), ("succeeded", None)]
    assert f["stages"][0]["summary"]["starts"] == [[1, 0], [2, 5]]  # crashed at 8, resumed from checkpoint 5
    m = service.http.get(f"/v1/jobs/{flaky['id']}/metrics", params={"keys": "loss", "split": "train"}).json()
    assert [p[0] for p in m["series"][0]["points"]] == list(range(1, 11))  # steps 6, 7 recomputed, stored once
    b = service.wait(broken["id"])
    assert (b["status"], b["failure_class"], len(b["attempts"])) == ("failed", "infra", 2)
    assert "no restarts left" in b["failure_reason"]


def test_pending_reason_names_the_missing_devices(service):
    service.worker(devices="cpu=2")
    npu = service.submit({"name": "big", "resources": {"backend": "npu", "devices_per_node": 8},
                          "stages": [stage()]})
    cpu = service.submit({"name": "wide", "resources": {"backend": "cpu", "devices_per_node": 4},
                          "stages": [stage()]})
    j = service.wait(npu["id"], lambda j: "asks for" in (j["pending_reason"] or ""), timeout=15)
    assert j["pending_reason"] == "asks for 8 npu devices per node; the largest running worker has no npu"
    j = service.wait(cpu["id"], lambda j: "asks for" in (j["pending_reason"] or ""), timeout=15)
    assert j["pending_reason"] == "asks for 4 cpu devices per node; the largest running worker has 2 cpu"
    fits = service.submit({"name": "fits", "resources": {"backend": "cpu", "devices_per_node": 1},
                           "stages": [stage(steps=2)]})
    assert service.wait(fits["id"])["status"] == "succeeded"
    assert service.job(npu["id"])["status"] == "queued"


def test_time_limit_stops_the_job(service):
    service.worker()
    job = service.submit({"name": "slow", "resources": {"time_limit": 1}, "stages": [stage(steps=10_000)]})
    done = service.wait(job["id"], timeout=20)
    assert done["status"] == "failed" and done["failure_class"] == "user"
    assert "time limit of 1s exceeded" in done["failure_reason"]


def test_worker_shutdown_requeues_the_running_job(service):
    w = service.worker("w-leaving")
    job = service.submit({"name": "moving", "stages": [stage(steps=60, step_time=0.05)]})
    service.wait(job["id"], running_at(5))
    w.send_signal(signal.SIGTERM)
    assert w.wait(15) == 0
    queued = service.job(job["id"])
    assert queued["status"] == "queued" and queued["pending_reason"].startswith("restart 1/3 after preempted")
    assert queued["attempts"][0]["status"] == "preempted"
    service.worker("w-next")
    done = service.wait(job["id"], timeout=30)
    assert done["status"] == "succeeded" and done["stages"][0]["summary"]["starts"][-1][1] >= 5


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    answers: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(type(self).answers.pop(0) if type(self).answers else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("configured", [True, False], ids=["whsec-from-env", "generated-into-home"])
def test_webhook_is_signed_per_standard_webhooks_and_retried(db_url, tmp_path, configured):
    """Receivers verify with the standardwebhooks package and the secret in whsec_ form, unchanged."""
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received, _Hook.answers = [], [500]  # the first delivery fails, the retry succeeds
    secret = "whsec_" + base64.b64encode(b"a receiver's shared key, 32 b..").decode()
    env = {"TINYFORGE_WEBHOOK_SECRET": secret} if configured else {}
    svc = Service(tmp_path / "home", db_url, embedded_worker=True, **env)
    try:
        job = svc.submit({"name": "hooked", "webhook": {"url": f"http://127.0.0.1:{server.server_port}/hook"},
                          "stages": [stage(steps=2)]})
        assert svc.wait(job["id"])["status"] == "succeeded"
        deadline = time.time() + 20
        while len(_Hook.received) < 2 and time.time() < deadline:
            time.sleep(0.2)
    finally:
        svc.close()
        server.shutdown()
    if not configured:
        secret = (tmp_path / "home" / "webhook.secret").read_text().strip()
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert len(_Hook.received) == 2
    (h1, b1), (h2, b2) = _Hook.received
    assert b1 == b2 and h1["webhook-id"] == h2["webhook-id"]  # receivers deduplicate on webhook-id
    receiver = Webhook(secret)
    for headers, body in _Hook.received:
        payload = receiver.verify(body, headers)  # raises unless signature and timestamp check out
        assert payload["job_id"] == job["id"] and payload["status"] == "succeeded"
        assert payload["event"] == "job.succeeded" and payload["delivery_id"] == headers["webhook-id"]
        assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):  # a changed body fails
        receiver.verify(b2.replace(b"succeeded", b"failed"), h2)
    with pytest.raises(WebhookVerificationError):  # so does another secret
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(b2, h2)
    with pytest.raises(WebhookVerificationError):  # and a replay outside the tolerance window
        receiver.verify(b2, {**h2, "webhook-timestamp": str(int(h2["webhook-timestamp"]) - 3600)})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_local_launcher_runs_torchrun_for_several_processes(service):
    service.worker(devices="cpu=2")
    job = service.submit({"name": "ddp", "resources": {"backend": "cpu", "devices_per_node": 2},
                          "stages": [stage("train", steps=3)]})
    done = service.wait(job["id"], timeout=90)
    assert done["status"] == "succeeded", service.http.get(f"/v1/jobs/{job['id']}/logs").text
    run = json.loads((Path(done["stages"][0]["run_dir"]) / "run.json").read_text())
    assert run["world_size"] == 2
    text = [x["line"] for x in service.http.get(f"/v1/jobs/{job['id']}/logs").json()["lines"]]
    assert any("rank 1" in t for t in text) and any("torch.distributed.run" in t for t in text)


def test_read_only_token_cannot_cancel(service):
    job = service.submit({"name": "guarded", "stages": [stage()]})
    ro = service.http.post("/v1/tokens", json={"scope": "read"}).json()["token"]
    r = httpx.post(f"{service.url}/v1/jobs/{job['id']}:cancel", headers={"Authorization": f"Bearer {ro}"})
    assert r.status_code == 403 and service.job(job["id"])["status"] == "queued"


def test_several_workers_run_each_job_exactly_once(service):
    for i in range(3):
        service.worker(f"w{i}")
    ids = [service.submit({"name": f"many-{i}", "resources": {"priority": i % 3},
                           "stages": [stage(steps=1, step_time=0)]})["id"] for i in range(24)]
    done = [service.wait(i, timeout=120) for i in ids]
    assert all(j["status"] == "succeeded" for j in done)
    assert all(len(j["attempts"]) == 1 and j["attempts"][0]["status"] == "succeeded" for j in done)
    for j in done:  # one claim each: exactly one `started` event, one run of the stage
        events = service.http.get(f"/v1/jobs/{j['id']}/events").json()
        assert [e["type"] for e in events].count("started") == 1
        assert j["stages"][0]["summary"]["starts"] == [[1, 0]]
    assert len({j["attempts"][0]["worker_id"] for j in done}) >= 2  # the work was shared


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_reference_to_a_missing_artifact_fails_as_a_user_error(service):
    service.worker()
    job = service.submit({"name": "dangling", "stages": [
        stage("tokenizer", steps=1, artifacts=[{"name": "vocab", "type": "data"}]),
        stage("train", echo="${stages.tokenizer.artifacts.tokenizer}")]})
    done = service.wait(job["id"])
    assert (done["status"], done["failure_class"], len(done["attempts"])) == ("failed", "user", 1)
    assert "recorded no artifact named or typed 'tokenizer'; it recorded: vocab (data)" in done["failure_reason"]
    assert [s["status"] for s in done["stages"]] == ["succeeded", "failed"]
