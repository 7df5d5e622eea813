"""`tinyforge demo` end to end at test size (--quick): it starts the service, submits the recipe through
the API, prints the results table and the export's path, and leaves every stage in the SQLite database
of ./.tinyforge, where a later `tinyforge serve` finds the job and its dashboard page (in a real headless
chromium) ends the argument the demo ends with: the recipe against its from-scratch control."""
from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import page_shot

pytestmark = pytest.mark.alone  # the demo gives each stage the cores idle now

STAGES = ["tokenizer", "parent", "inherit", "round1", "round2", "export", "eval", "scratch", "eval_scratch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_quick_demo_runs_the_recipe_through_the_service(tmp_path, open_page):
    exe = str(Path(sys.executable).with_name("tinyforge"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYFORGE_")}  # the demo's own defaults
    t0 = time.time()
    proc = subprocess.run([exe, "demo", "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, (out[-3000:], proc.stderr[-3000:])
    assert time.time() - t0 < 300

    # the results table: a header and one succeeded row per stage, with its figures
    assert re.search(r"^stage\s+kind\s+status\s+time\s+key figures$", out, re.M), out
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^(\w+)\s+\w+\s+succeeded\s+\d+:\d\d\s+(.*)$", out, re.M)}
    assert list(rows) == STAGES, out
    assert re.search(r"vocab 2,048 -> [\d,]+ pieces", rows["tokenizer"])
    assert re.search(r"val loss \d+\.\d{4}, val bpb \d+\.\d{4}", rows["eval"])
    assert re.search(r"^final model: [\d,]+ parameters, held-out loss \d+\.\d{4}", out, re.M)
    # the last word: the recipe against the same shape trained from scratch, at equal child training compute
    m = re.search(r"^recipe vs scratch: (\d+\.\d{4}) vs (\d+\.\d{4}) held-out bits/byte \(([+-]\d+\.\d{4}), .*"
                  r"at equal child training compute \(([\d.]+) vs ([\d.]+) TFLOP of child training, ([\d,]+) vs "
                  r"([\d,]+) tokens\); the parent cost", out, re.M)
    assert m, out
    assert m.group(6) == m.group(7) and m.group(4) == m.group(5)  # 20 + 10 steps of the recipe, 30 of the control
    assert rows["eval"].endswith(f"val bpb {m.group(1)}") and rows["eval_scratch"].endswith(f"val bpb {m.group(2)}")

    # the export is where the demo says, and transformers' files are in it
    hf_dir = tmp_path / re.search(r"^Hugging Face model: (\S+)$", out, re.M).group(1)
    assert (hf_dir / "config.json").is_file() and (hf_dir / "model.safetensors").is_file()
    assert (hf_dir / "tokenizer.model").is_file()
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/ui/#/jobs/j\w+ .*tinyforge serve --home \.tinyforge", out,
                     re.M)

    # every stage is in the database under ./.tinyforge, succeeded, with its summary
    home = tmp_path / ".tinyforge"
    with sqlite3.connect(home / "tinyforge.db") as db:
        (job_id, status), = db.execute("SELECT id, status FROM jobs").fetchall()
        stages = db.execute("SELECT name, status, summary FROM stages WHERE job_id = ? ORDER BY position",
                            (job_id,)).fetchall()
    assert status == "succeeded"
    assert [(n, s) for n, s, _ in stages] == [(n, "succeeded") for n in STAGES]
    assert all(summary for *_, summary in stages)

    # a later `tinyforge serve` on the same home shows the job
    port = _free_port()
    serve = subprocess.Popen([exe, "serve", "--home", str(home), "--port", str(port), "--no-worker"], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        token = (home / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job_id}", headers=headers, timeout=5)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and serve.poll() is None, "serve did not come up"
                time.sleep(0.3)
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "succeeded"
        assert [s["name"] for s in job["stages"]] == STAGES

        # the job's comparison is the demo's last word, from the two eval stages at equal child compute
        cmp, by = job["comparison"], {st["name"]: st["summary"] for st in job["stages"]}
        assert cmp["recipe_bpb"] == by["eval"]["val_bpb"] and cmp["scratch_bpb"] == by["eval_scratch"]["val_bpb"]
        assert cmp["child_tokens"] == cmp["scratch_tokens"] == by["round1"]["tokens"] + by["round2"]["tokens"]
        assert f"recipe vs scratch: {cmp['recipe_bpb']:.4f} vs {cmp['scratch_bpb']:.4f}" in out

        # and the dashboard's job page says it, and charts held-out bits per byte: the unit that compares the
        # parent (large tokenizer) with the child stages (compact tokenizer)
        expect = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra").expect
        page, watch = open_page(f"http://127.0.0.1:{port}", token, f"#/jobs/{job_id}")
        expect(page.locator("#job-comparison")).to_contain_text(
            f"{cmp['recipe_bpb']:.4f} vs {cmp['scratch_bpb']:.4f} held-out bits/byte")
        expect(page.locator("#job-comparison")).to_contain_text("equal child training compute")
        page.wait_for_function("() => +document.querySelector('#chart-bpb canvas').dataset.points > 0")
        expect(page.locator("#chart-bpb")).to_contain_text("bits per byte")
        page_shot(page, "recipe-vs-scratch")
        assert not watch.errors and not watch.dialogs, (watch.errors, watch.dialogs)
    finally:
        serve.terminate()
        serve.wait(timeout=30)


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_and_stops_every_process(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) during the parent stage: the job ends cancelled, so
    the next demo does not resume it first, and neither the server nor a stage is left running."""
    import signal

    home, log = tmp_path / "home", tmp_path / "demo.out"
    with open(log, "w") as out:
        demo = subprocess.Popen([str(Path(sys.executable).with_name("tinyforge")), "demo", "--quick", "--home",
                                 str(home)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while "[parent]  running  step" not in log.read_text():
            assert time.time() < deadline and demo.poll() is None, log.read_text()
            time.sleep(0.3)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(timeout=120) == 130
    assert "cancelled" in log.read_text()
    with sqlite3.connect(home / "tinyforge.db") as db:
        assert db.execute("SELECT status FROM jobs").fetchall() == [("cancelled",)]
        stages = dict(db.execute("SELECT name, status FROM stages").fetchall())
    # the parent is cancelled, or had just finished when the cancel reached it; nothing after it runs
    assert stages["parent"] in ("cancelled", "succeeded"), stages
    assert [stages[name] for name in STAGES[2:]] == ["cancelled"] * (len(STAGES) - 2), stages
    left = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout.split()
    assert left == [], subprocess.run(["ps", "-o", "pid,args", "-p", ",".join(left)], capture_output=True,
                                      text=True).stdout
