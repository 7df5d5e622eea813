"""The dashboard end to end: real headless chromium -> the dashboard served by a real `tinyforge serve`
-> its embedded worker -> real `tinyforge train` / `export-hf` subprocesses. The tests share one server
and run in order: the job submitted from the form is then compared, listed and traced."""
from __future__ import annotations

import re
import time

import pytest

from dashboard_fixtures import REAL_ENGINE, REPO, Service, page_shot, shot

pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.slow
XSS = "<img src=x onerror=alert(1)>"
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def dash(tmp_path_factory):
    """A server with the real engine, and a token of each scope."""
    with Service.on_sqlite(tmp_path_factory.mktemp("dash"), embedded_worker=True, **REAL_ENGINE) as svc:
        for scope in ("read", "submit"):
            r = svc.http.post("/v1/tokens", json={"scope": scope, "name": f"dashboard-{scope}"})
            assert r.status_code == 201, r.text
            setattr(svc, f"{scope}_token", r.json()["token"])
        svc.jobs = {}  # what earlier tests made, by role
        yield svc


def micro(name: str, steps: int, **resources) -> dict:
    return {"name": name, "labels": {"suite": "dashboard"}, "resources": {"backend": "cpu", **resources},
            "stages": [{"name": "train", "kind": "train", "config": {
                "model": {"preset": "micro"}, "data": {"sources": ["data/sample"]}, "steps": steps, "micro_batch": 4,
                "batch_size": 4, "seq_len": 64, "precision": "fp32", "log_every": 1, "eval_every": 10,
                "eval_batches": 1, "checkpoint_every": 10}}]}


def need(dash, role: str) -> dict:
    if role not in dash.jobs:
        pytest.skip(f"needs the {role} job of an earlier test in this module")
    return dash.jobs[role]


def chart_points(page, key: str) -> int:
    return int(page.get_attribute(f"#chart-{key} canvas", "data-points") or 0)


def test_sign_in_refuses_a_bad_token_and_accepts_a_good_one(dash, open_page):
    page, watch = open_page(dash.url)
    expect(page.locator("#token")).to_be_visible()
    page.fill("#token", "tf_not-a-token")
    page.click("#signin")
    expect(page.locator("#signin-error")).to_contain_text("not valid")
    page.fill("#token", dash.submit_token)
    page.click("#signin")
    expect(page.locator("#scope")).to_have_text("read + submit")
    expect(page.locator("#nav-submit")).to_be_visible()
    # the token survives a reload (remembered on this device), and signing out forgets it
    page.reload()
    expect(page.locator("#scope")).to_have_text("read + submit")
    page.click("#signout")
    expect(page.locator("#token")).to_be_visible()
    page.reload()
    expect(page.locator("#token")).to_be_visible()
    assert not watch.errors and not watch.dialogs


def test_submit_form_shows_the_servers_error_next_to_the_field(dash, open_page):
    before = len(dash.http.get("/v1/jobs").json()["items"])
    page, watch = open_page(dash.url, dash.submit_token, "#/submit")
    page.fill("#f-steps", "0")
    page.fill("#f-sources", "/etc")
    page.click("#submit-btn")
    expect(page.locator("#err-steps")).to_contain_text("must be positive, got 0")
    expect(page.locator("#err-sources")).to_contain_text("outside the data roots")
    expect(page.locator("#f-steps")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#spec-errors li[data-field='stages.0.config.steps']")).to_be_visible()
    page_shot(page, "submit-error", height=1100)
    assert len(dash.http.get("/v1/jobs").json()["items"]) == before  # plan refused it: nothing stored
    # fixed fields clear their errors on the next plan
    page.fill("#f-steps", "40")
    page.fill("#f-sources", "data/sample")
    page.click("#plan-btn")
    expect(page.locator("#plan-verdict")).to_contain_text("Valid")
    expect(page.locator("#err-steps")).to_be_empty()
    # the recipe template plans into the whole PanGu-pi Pro pipeline, wired by references
    page.select_option("#f-template", "recipe")
    page.fill("#f-r_round2_steps", "-5")
    page.click("#plan-btn")
    expect(page.locator("#err-r_round2_steps")).not_to_be_empty()
    page.fill("#f-r_round2_steps", "150")
    page.click("#plan-btn")
    expect(page.locator("#plan tbody tr td:first-child")).to_have_text(
        ["tokenizer", "parent", "inherit", "round1", "round2", "export", "eval"])
    expect(page.locator("#plan")).to_contain_text("${stages.round1.artifacts.checkpoint}")
    page.locator("#plan").scroll_into_view_if_needed()
    shot(page, "submit-recipe-plan", docs=True)
    assert len(dash.http.get("/v1/jobs").json()["items"]) == before
    assert not watch.errors and not watch.dialogs


def test_submit_from_the_form_and_watch_it_succeed_with_live_charts(dash, open_page):
    page, watch = open_page(dash.url, dash.submit_token, "#/submit")
    page.fill("#f-name", "form-micro")
    page.fill("#f-labels", "suite=dashboard, via=form")
    page.fill("#f-steps", "800")  # ~20 s on an idle machine: several chart updates while it runs
    page.fill("#f-seq_len", "64")
    page.fill("#f-eval_every", "10")
    page.check("#f-export")
    page.click("#submit-btn")
    page.wait_for_url("**/ui/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-name")).to_contain_text("form-micro")
    expect(page.locator("#pipeline [data-stage]")).to_have_count(2)

    # the loss chart fills in while the job runs, without reloading
    seen, shot_taken = set(), False
    deadline = time.time() + 600
    while time.time() < deadline:
        status = page.get_attribute("#main", "data-status")
        points = chart_points(page, "loss")
        if status == "running" and points:
            seen.add(points)
            if not shot_taken and points >= 30:
                page_shot(page, "job-live")
                shot_taken = True
        if status in TERMINAL:
            break
        time.sleep(0.25)
    job = dash.job(job_id)
    assert job["status"] == "succeeded", job
    assert len(seen) >= 2, f"the chart did not update while the job ran (point counts seen: {sorted(seen)})"
    expect(page.locator("#main")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#job-name .badge")).to_have_text("succeeded")
    # every chart shows what the trainer recorded; held-out loss is a second (dashed) series
    m = dash.http.get(f"/v1/jobs/{job_id}/metrics", params={"keys": "loss", "stage": "train"}).json()
    expect(page.locator("#chart-loss canvas")).to_have_attribute("data-recorded", str(sum(s["count"] for s in m["series"])))
    assert page.get_attribute("#chart-loss canvas", "data-series") == "2"
    for key in ("lr", "grad_norm", "tokens_per_s"):
        assert chart_points(page, key) > 0, key
    assert max(seen) <= int(page.get_attribute("#chart-loss canvas", "data-points"))
    # the log came in over server-sent events and can be searched
    expect(page.locator("#log-state")).to_contain_text("log complete")
    page.fill("#log-search", "val loss")
    expect(page.locator("#log .ln mark").first).to_have_text("val loss")
    shown = page.locator("#log .ln").count()
    assert 0 < shown < len(dash.http.get(f"/v1/jobs/{job_id}/logs", params={"limit": 10000}).json()["lines"])
    page.fill("#log-search", "")
    # attempts, events and artifacts; a download arrives with the token
    expect(page.locator("#job-attempts tr[data-attempt='1'] .badge")).to_have_text("succeeded")
    expect(page.locator("#events li[data-type]").first).to_be_visible()
    expect(page.locator("#job-artifacts tr[data-artifact='loss_curve']")).to_be_visible()
    expect(page.locator("#job-artifacts .gallery img")).to_have_count(1)
    with page.expect_download() as dl:
        page.click("#job-artifacts button[data-artifact='loss_curve']")
    data = open(dl.value.path(), "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    page_shot(page, "job-detail")
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "job-detail-full", full_page=True)
    dash.jobs["trained"] = job
    assert not watch.errors and not watch.dialogs


def test_cancel_a_running_job_after_confirming(dash, open_page):
    job = dash.submit(micro("to-cancel", 100000), key="dash-cancel")
    page, watch = open_page(dash.url, dash.submit_token, f"#/jobs/{job['id']}")
    dash.wait(job["id"], lambda j: j["status"] == "running" and (j["step"] or 0) >= 12, timeout=300)  # past the held-out eval at 10
    expect(page.locator("#main")).to_have_attribute("data-status", "running")
    jobs_page, _ = open_page(dash.url, dash.read_token, "#/jobs")  # the list, with a job running
    expect(jobs_page.locator(f"tr[data-job-id='{job['id']}'] .progress .steps")).not_to_have_text("–")
    page_shot(jobs_page, "jobs", height=480)
    page.click("#cancel-job")
    dialog = page.locator("dialog.confirm")
    expect(dialog).to_be_visible()
    dialog.locator("button[value='cancel']").click()  # "Keep it": nothing happens
    expect(dialog).to_have_count(0)
    assert not dash.job(job["id"])["cancel_requested"]
    page.click("#cancel-job")
    page.locator("dialog.confirm button[value='ok']").click()
    expect(page.locator("#cancel-job")).to_have_text("Cancelling…")
    expect(page.locator("#main")).to_have_attribute("data-status", "cancelled", timeout=90_000)
    done = dash.job(job["id"])
    assert done["status"] == "cancelled" and done["cancel_requested"]
    expect(page.locator("#cancel-job")).to_have_count(0)
    # retry asks too, then a new attempt resumes the run from its checkpoint
    page.click("#retry-job")
    page.locator("dialog.confirm button[value='ok']").click()
    expect(page.locator("#job-attempts tr[data-attempt='2']")).to_be_visible()
    again = dash.wait(job["id"], lambda j: j["status"] == "running" and (j["step"] or 0) > done["stages"][0]["step"],
                      timeout=300)
    assert len(again["attempts"]) == 2
    expect(page.locator("#log-state")).to_have_text("live")  # the log follows the new attempt
    assert dash.http.post(f"/v1/jobs/{job['id']}:cancel").status_code == 200
    expect(page.locator("#main")).to_have_attribute("data-status", "cancelled", timeout=90_000)
    expect(page.locator("#retry-job")).to_be_visible()
    done = dash.job(job["id"])
    dash.jobs["cancelled"] = done
    assert not watch.errors and not watch.dialogs


def test_compare_overlays_the_runs(dash, open_page):
    a, b = need(dash, "trained"), need(dash, "cancelled")
    page, watch = open_page(dash.url, dash.read_token, f"#/compare?ids={a['id']},{b['id']}")
    expect(page.locator("#compare-summary tr[data-job-id]")).to_have_count(2)
    expect(page.locator("#compare-train canvas")).to_have_attribute("data-series", "2")
    expect(page.locator("#compare-val canvas")).to_have_attribute("data-series", "2")
    row = page.locator(f"#compare-summary tr[data-job-id='{a['id']}']")
    expect(row).to_contain_text("succeeded")
    val = a["stages"][0]["summary"]["val_loss"]
    expect(row).to_contain_text(f"{val:.3f}")
    page.select_option("#compare-metric", "grad_norm")
    expect(page.locator("#compare-other figcaption")).to_contain_text("Grad norm")
    # unticking a run takes it off the charts and the table
    page.locator(f"#compare-picker [data-job-id='{b['id']}'] input").uncheck()
    expect(page.locator("#compare-summary tr[data-job-id]")).to_have_count(1)
    page.locator(f"#compare-picker [data-job-id='{b['id']}'] input").check()
    expect(page.locator("#compare-summary tr[data-job-id]")).to_have_count(2)
    page.select_option("#compare-metric", "lr")
    page_shot(page, "compare", height=900)
    assert not watch.errors and not watch.dialogs


def test_jobs_list_filters_and_updates_live(dash, open_page):
    trained, cancelled = need(dash, "trained"), need(dash, "cancelled")
    page, watch = open_page(dash.url, dash.read_token, "#/jobs")
    expect(page.locator(f"tr[data-job-id='{trained['id']}'] .badge")).to_have_text("succeeded")
    expect(page.locator(f"tr[data-job-id='{cancelled['id']}'] .badge")).to_have_text("cancelled")
    # a job submitted elsewhere appears without a reload, with the reason it waits
    waiting = dash.submit(micro("needs-8-cpus", 10, devices_per_node=8), key="dash-waiting")
    row = page.locator(f"tr[data-job-id='{waiting['id']}']")
    expect(row.locator(".badge")).to_have_text("queued")
    expect(row.locator(".reason")).to_contain_text("8")
    dash.jobs["waiting"] = waiting
    page.click("button.filter-chip[data-status='succeeded']")
    expect(page.locator("tr[data-job-id]")).to_have_count(1)
    expect(page.locator(f"tr[data-job-id='{trained['id']}']")).to_be_visible()
    assert "status=succeeded" in page.url  # filters live in the address, so a link keeps them
    page.click("button.filter-chip[data-status='succeeded']")
    page.fill("#filter-name", "cancel")
    expect(page.locator("tr[data-job-id]")).to_have_count(1)
    expect(page.locator(f"tr[data-job-id='{cancelled['id']}']")).to_be_visible()
    page.fill("#filter-name", "")
    page.fill("#filter-label", "via=form")
    expect(page.locator("tr[data-job-id]")).to_have_count(1)
    page.fill("#filter-label", "")
    expect(page.locator("tr[data-job-id]")).to_have_count(3)
    page_shot(page, "jobs-filtered", height=520, docs=False)
    # select two and compare them
    page.locator(f"tr[data-job-id='{trained['id']}'] td.sel input").check()
    page.locator(f"tr[data-job-id='{cancelled['id']}'] td.sel input").check()
    page.click("#compare-selected")
    expect(page.locator("#compare-summary tr[data-job-id]")).to_have_count(2)
    assert not watch.errors and not watch.dialogs


def test_lineage_from_training_to_export(dash, open_page):
    job = need(dash, "trained")
    train, export = job["stages"]
    page, watch = open_page(dash.url, dash.read_token, f"#/jobs/{job['id']}")
    page.click("#lineage-link")
    expect(page.locator("#lineage-stage")).to_have_text("export")
    expect(page.locator(f"#lineage-graph g[data-node='{train['id']}']")).to_be_visible()
    expect(page.locator(f"#lineage-graph g[data-node='{export['id']}']")).to_be_visible()
    expect(page.locator("#lineage-edges")).to_contain_text("checkpoint")
    lineage = dash.http.get(f"/v1/stages/{export['id']}/lineage").json()
    expect(page.locator("#lineage-graph g[data-node]")).to_have_count(len(lineage["nodes"]))
    page_shot(page, "lineage", height=560)
    page.locator(f"#lineage-graph g[data-node='{train['id']}']").click()
    expect(page.locator("#job-name")).to_contain_text("form-micro")
    assert not watch.errors and not watch.dialogs


def test_read_only_token_sees_no_cancel_retry_or_submit(dash, open_page):
    waiting, cancelled = need(dash, "waiting"), need(dash, "cancelled")
    page, watch = open_page(dash.url, dash.read_token, f"#/jobs/{waiting['id']}")
    expect(page.locator("#scope")).to_have_text("read-only")
    expect(page.locator("#pending-reason")).to_contain_text("8")
    expect(page.locator("#job-name")).to_contain_text("needs-8-cpus")
    expect(page.locator("#cancel-job")).to_have_count(0)
    expect(page.locator("#nav-submit")).to_have_count(0)
    page.goto(f"/ui/#/jobs/{cancelled['id']}")
    expect(page.locator("#job-name")).to_contain_text("to-cancel")
    expect(page.locator("#retry-job")).to_have_count(0)
    page.goto("/ui/#/submit")
    expect(page.locator("#needs-submit")).to_be_visible()
    expect(page.locator("#submit-btn")).to_have_count(0)
    page.goto("/ui/#/jobs/j-no-such-job")
    expect(page.locator("#not-found")).to_contain_text("not found")
    # the same pages with a submit token do have them
    page2, _ = open_page(dash.url, dash.submit_token, f"#/jobs/{waiting['id']}")
    expect(page2.locator("#cancel-job")).to_be_visible()
    assert not watch.errors and not watch.dialogs


def test_markup_in_job_names_and_labels_is_shown_as_text(dash, open_page):
    evil = dash.submit({**micro(XSS, 5, devices_per_node=8), "labels": {"note": "<script>alert(2)</script>"}},
                       key="dash-xss")
    page, watch = open_page(dash.url, dash.submit_token, "#/jobs")
    row = page.locator(f"tr[data-job-id='{evil['id']}']")
    expect(row.locator("a.job-link")).to_have_text(XSS)
    expect(row).to_contain_text("note=<script>alert(2)</script>")
    assert page.locator("#main img").count() == 0
    page.goto(f"/ui/#/jobs/{evil['id']}")
    expect(page.locator("#job-name")).to_contain_text(XSS)
    page.goto(f"/ui/#/compare?ids={evil['id']}")
    expect(page.locator("#compare-summary")).to_contain_text(XSS)
    page.goto("/ui/#/jobs")
    expect(row.locator("a.job-link")).to_have_text(XSS)
    assert page.locator("#main img, #main script").count() == 0
    assert watch.dialogs == [], watch.dialogs
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    dash.http.post(f"/v1/jobs/{evil['id']}:cancel")
    assert not watch.errors


def test_phone_width_is_usable(dash, open_page):
    job = need(dash, "trained")
    page, watch = open_page(dash.url, dash.submit_token, "#/jobs", width=390, height=844)
    expect(page.locator("tr[data-job-id]").first).to_be_visible()
    overflow = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    assert page.evaluate(overflow) <= 0, "the jobs page scrolls sideways at phone width"
    expect(page.locator("#nav-submit")).to_be_in_viewport()
    shot(page, "phone-jobs", docs=True)
    page.goto(f"/ui/#/jobs/{job['id']}")
    expect(page.locator("#main")).to_have_attribute("data-status", "succeeded")
    assert page.evaluate(overflow) <= 0, "the job page scrolls sideways at phone width"
    box = page.locator("#chart-loss").bounding_box()
    assert box["width"] <= 390 and box["width"] > 300
    expect(page.locator("#chart-loss canvas")).to_have_attribute("data-points", re.compile(r"^[1-9]"))
    page.locator("#job-charts").scroll_into_view_if_needed()
    shot(page, "phone-job", docs=True)
    page.goto("/ui/#/submit")
    page.fill("#f-name", "")
    page.click("#submit-btn")
    expect(page.locator("#err-name")).to_contain_text("at least 1 character")
    assert page.evaluate(overflow) <= 0, "the submit page scrolls sideways at phone width"
    assert not watch.errors and not watch.dialogs


def test_static_files_are_served_with_a_strict_policy(dash):
    import httpx
    r = httpx.get(dash.url + "/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/"
    r = httpx.get(dash.url + "/ui/")
    assert r.status_code == 200 and "js/app.js" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    # nothing is fetched from another origin at run time
    static = REPO / "service" / "dashboard" / "static"
    for f in static.rglob("*"):
        if f.suffix in (".html", ".js", ".css"):
            text = f.read_text()
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, f
