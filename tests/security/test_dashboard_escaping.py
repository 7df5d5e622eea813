"""The dashboard shows job-supplied text as text. Jobs whose name, labels, log lines, failure reason,
artifact names, summaries and input paths carry HTML/script payloads run on a real server (embedded
worker, tests/support/fake_engine.py --hostile as the engine); the real dashboard in chromium opens every
page that shows them. Each payload must appear literally and never run: `window.__pwned` stays
undefined, no element the payload describes exists, no dialog opens.

The browser context bypasses the dashboard's Content-Security-Policy (which alone would block inline
handlers): this test proves the escaping by itself; test_auth_matrix.py checks the policy is sent."""
from __future__ import annotations

import pytest

from security_fixtures import HOSTILE_ENGINE, Service, stage

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=2</script>"
SVG = '<svg onload="window.__pwned=3"></svg>'
LINK = '<a href="javascript:window.__pwned=4" id="evil">x</a>'
PAYLOAD = f"{IMG}{SCRIPT}"
# every element or attribute a payload would bring if it were parsed as HTML
INJECTED = "img[src='x'], img[onerror], script:not([src]), svg[onload], [onload], [onerror], a#evil, a[href^='javascript']"

pytestmark = pytest.mark.slow
PlaywrightTimeout = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra").TimeoutError


@pytest.fixture
def hostile_service(tmp_path):
    with Service.on_sqlite(tmp_path, embedded_worker=True, TINYFORGE_ENGINE_COMMAND=HOSTILE_ENGINE) as svc:
        yield svc


def submit_hostile_jobs(svc) -> tuple[dict, dict]:
    ok = svc.submit({"name": f"ok {PAYLOAD}", "labels": {"team": IMG, "note": SVG, "link": LINK},
                     "stages": [stage("train", name="first", echo=PAYLOAD, steps=3),
                                stage("eval", name="second", echo=SVG + LINK, steps=2)]})
    bad = svc.submit({"name": f"bad {SVG}", "labels": {"why": SCRIPT},
                      "stages": [stage("train", echo=PAYLOAD, exit_code=2)]})
    ok, bad = svc.wait(ok["id"], timeout=120), svc.wait(bad["id"], timeout=120)
    assert ok["status"] == "succeeded", ok
    assert bad["status"] == "failed" and IMG in bad["failure_reason"], bad
    return ok, bad


def test_stage_names_cannot_carry_markup(sqlite_service):
    r = sqlite_service.http.post("/v1/jobs", json={"name": "x", "stages": [stage("train", name=IMG)]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "stages.0.name", r.text
    r = sqlite_service.http.post("/v1/jobs", json={"name": "x", "labels": {IMG: "v"}, "stages": [stage("train")]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("labels"), r.text


def test_job_supplied_text_is_shown_literally_and_never_runs(hostile_service, browser):
    svc = hostile_service
    ok, bad = submit_hostile_jobs(svc)
    ctx = browser.new_context(base_url=svc.url, bypass_csp=True, viewport={"width": 1280, "height": 900})
    try:
        page = ctx.new_page()
        page.set_default_timeout(30_000)
        dialogs, errors = [], []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/ui/")
        page.fill("#token", svc.token)
        page.click("#signin")
        page.wait_for_selector("#scope", state="attached")

        def check(where: str, *texts: str) -> None:
            missing = []
            for text in texts:  # shown, literally, as text
                try:
                    page.wait_for_function("t => document.body.innerText.includes(t)", arg=text, timeout=15_000)
                except PlaywrightTimeout:
                    missing.append(text)
            pwned = page.evaluate("window.__pwned")
            found = page.evaluate("s => [...document.querySelectorAll(s)].map(e => e.outerHTML)", INJECTED)
            assert (pwned, found, dialogs, missing) == (None, [], [], []), where

        page.goto("/ui/#/jobs")
        check("jobs list", f"ok {PAYLOAD}", f"bad {SVG}", f"team={IMG}", f"note={SVG}", f"why={SCRIPT}")

        page.goto(f"/ui/#/jobs/{ok['id']}")
        page.wait_for_selector("#log[role=log] .ln")
        page.wait_for_function("() => document.querySelector('#log-state').textContent.includes('log complete')")
        page.wait_for_selector("#job-artifacts table")
        check("job page", f"ok {PAYLOAD}", f"link={LINK}", f"stdout says: {PAYLOAD}", f"stderr says: {SVG}{LINK}",
              PAYLOAD[:100])
        assert page.title().startswith(f"ok {PAYLOAD}")

        page.goto(f"/ui/#/jobs/{bad['id']}")
        page.wait_for_selector("#failure-reason")
        check("failed job page", f"bad {SVG}", f"error: {PAYLOAD}")

        page.goto(f"/ui/#/compare?ids={ok['id']},{bad['id']}")
        check("compare page", f"ok {PAYLOAD} · first · rows")

        page.goto(f"/ui/#/lineage/{ok['stages'][0]['id']}")
        check("lineage page", f"/data/{PAYLOAD}")
        page.wait_for_timeout(500)  # anything deferred (an image's onerror) would have fired by now
        assert page.evaluate("window.__pwned") is None
        assert not errors, errors
    finally:
        ctx.close()
