"""With the fake engine in bulk mode (tests/support/fake_engine.py, bulk_chunks): charts stay light with
100k metric points per run (the dashboard asks the API for at most about one point per pixel and draws each downsampled bucket's
min-max band), and the compare view shows the per-round table a rounds stage records."""
from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from dashboard_fixtures import Service, page_shot

pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 100_000
BULK = {"bulk_chunks": 20}  # the run's metrics in 20 large writes, as a trainer flushing a buffer


@pytest.fixture(scope="module")
def bulk(tmp_path_factory):
    with Service.on_sqlite(tmp_path_factory.mktemp("bulk"), embedded_worker=True) as svc:
        yield svc


def test_a_100k_point_run_is_drawn_from_downsampled_series(bulk, open_page):
    job = bulk.submit({"name": "long-run", "stages": [{"kind": "train", "config": {"steps": STEPS, **BULK}}]})
    done = bulk.wait(job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    metric_requests = []
    page, watch = open_page(bulk.url, bulk.token)
    page.on("request", lambda r: "/metrics" in r.url and metric_requests.append(r.url))
    page.goto(f"/ui/#/jobs/{job['id']}")
    canvas = page.locator("#chart-loss canvas")
    expect(canvas).to_have_attribute("data-recorded", str(STEPS + STEPS // 100))
    expect(canvas).to_have_attribute("data-downsampled", "true")
    max_points = int(parse_qs(urlparse(metric_requests[-1]).query)["max_points"][0])
    assert 100 <= max_points <= 2000
    drawn = int(canvas.get_attribute("data-points"))
    assert 0 < drawn <= 2 * max_points  # train and held-out series, each at most max_points
    assert page.get_attribute("#chart-loss canvas", "data-last-step") == str(STEPS)
    expect(page.locator("#chart-note")).to_contain_text("201,000 points recorded")  # loss and lr
    # the read-out under the pointer shows a bucket's mean and its min-max range
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = page.locator("#chart-loss .chart-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("…")
    page_shot(page, "job-100k-points", height=900)
    assert not watch.errors and not watch.dialogs


def test_compare_shows_the_round_table_a_rounds_stage_records(bulk, open_page):
    spec = {"name": "two-rounds", "stages": [{"kind": "train", "config": {"steps": 200, **BULK}},
                                             {"kind": "rounds", "config": {"steps": 400, **BULK}}]}
    job = bulk.wait(bulk.submit(spec)["id"], timeout=120)
    assert job["status"] == "succeeded", job
    rounds = job["stages"][1]["summary"]["rounds"]
    page, watch = open_page(bulk.url, bulk.token, f"#/compare?ids={job['id']}")
    table = page.locator(f".summary-table[data-job='{job['id']}'][data-stage='rounds'][data-key='rounds']")
    expect(table.locator("tbody tr")).to_have_count(len(rounds))
    expect(table.locator("th")).to_contain_text(["round", "steps", "tokens", "val_loss", "selection"])
    expect(table.locator("tbody tr").nth(1)).to_contain_text(f"{rounds[1]['val_loss']:.3f}")
    expect(table.locator("tbody tr").nth(1)).to_contain_text("strategy=hard")
    # both stages' curves are overlaid, labelled by stage
    page_shot(page, "compare-rounds", height=900)
    expect(page.locator("#compare-train .legend .item")).to_have_text(["two-rounds · train", "two-rounds · rounds"])
    assert not watch.errors and not watch.dialogs
