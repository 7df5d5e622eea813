"""A stage that writes more metrics than one flush reads (8 MiB) just before it exits still has every
point stored: the final flush drains the file."""
from __future__ import annotations

import pytest

from tests.support.service import Service

pytestmark = pytest.mark.slow


def test_final_flush_stores_every_point_of_a_large_last_write(tmp_path):
    steps = 101_000  # ~9.6 MiB of JSON lines, written at once at the end of the stage
    svc = Service.on_sqlite(tmp_path, embedded_worker=True)
    try:
        job = svc.submit({"name": "one-big-write", "stages": [{"kind": "train",
                                                               "config": {"steps": steps, "bulk_chunks": 1}}]})
        done = svc.wait(job["id"], timeout=300)
        assert done["status"] == "succeeded", done
        r = svc.http.get(f"/v1/jobs/{job['id']}/metrics", params={"keys": "loss", "max_points": 100})
        r.raise_for_status()
        counts = {(s["split"], s["count"]) for s in r.json()["series"]}
        assert ("train", steps) in counts and ("val", steps // 100) in counts, counts
    finally:
        svc.close()
