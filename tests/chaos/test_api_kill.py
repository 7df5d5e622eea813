"""The API process is SIGKILLed twice in the middle of a burst of submissions and started again; clients retry
whatever was not acknowledged with the same Idempotency-Key. Every acknowledged submission is there
after the restart, none twice, and no job is left half-written or without an owner."""
from __future__ import annotations

import collections
import threading
import time

import httpx
import pytest

from chaos_fixtures import ChaosService, consistency_problems, stage

pytestmark = pytest.mark.alone  # kills servers under a timed burst of clients

CLIENTS, PER_CLIENT = 8, 40


@pytest.mark.slow
def test_api_sigkill_during_a_submission_burst_loses_and_duplicates_nothing(tmp_path, any_db_url, figures):
    kind = any_db_url.split(":")[0]
    figures.update(name=f"api_sigkill_burst_{kind}", fault=f"API SIGKILL x2 during a burst of {CLIENTS}x{PER_CLIENT} "
                                                          f"idempotent submissions ({kind})")
    svc = ChaosService(tmp_path / "home", any_db_url)
    total = CLIENTS * PER_CLIENT
    acked: dict[str, tuple[str, int]] = {}  # key -> (job id, status of the acknowledging answer)
    counts = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        with httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {svc.token}"}, timeout=10) as h:
            for i in range(PER_CLIENT):
                key = f"burst-{c}-{i}"
                spec = {"name": key, "labels": {"burst": "1"}, "stages": [stage(steps=1)]}
                while not stop.is_set():
                    try:
                        r = h.post("/v1/jobs", json=spec, headers={"Idempotency-Key": key})
                    except httpx.TransportError:
                        with lock:
                            counts["transport_errors"] += 1
                        time.sleep(0.05)
                        continue
                    if r.status_code >= 500:
                        with lock:
                            counts["http_5xx"] += 1
                            counts[f"http_{r.status_code}"] += 1
                        time.sleep(0.05)
                        continue
                    with lock:
                        if r.status_code in (200, 201):
                            acked[key] = (r.json()["id"], r.status_code)
                        else:
                            counts[f"http_{r.status_code}"] += 1
                    break

    try:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        acked_at_kill = []
        for share in (1, 2):  # killed with a third, then two thirds acknowledged: the burst in full flow
            deadline = time.time() + 60
            while len(acked) < total * share // 3:
                assert time.time() < deadline and any(t.is_alive() for t in threads)
                time.sleep(0.002)
            svc.kill_api()
            acked_at_kill.append(len(acked))
            time.sleep(0.5)  # clients meet a closed port meanwhile
            svc.start_api()
        for t in threads:
            t.join(90)
        stop.set()
        assert not any(t.is_alive() for t in threads)

        # what the restarted server holds
        keys = [f"burst-{c}-{i}" for c in range(CLIENTS) for i in range(PER_CLIENT)]
        found = 0
        for key in keys:  # a repeat with the same key answers the original job
            r = svc.http.post("/v1/jobs", json={"name": key, "labels": {"burst": "1"}, "stages": [stage(steps=1)]},
                              headers={"Idempotency-Key": key})
            assert r.status_code == 200, (key, r.status_code, r.text)
            if key in acked and r.json()["id"] == acked[key][0]:
                found += 1
        by_name = collections.Counter()
        params = {"label": "burst=1", "limit": 500}
        while True:
            page = svc.http.get("/v1/jobs", params=params).json()
            by_name.update(j["name"] for j in page["items"])
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        duplicates = sum(n - 1 for n in by_name.values())
        replayed = sum(1 for _, status in acked.values() if status == 200)  # committed, answer lost with the API
        figures.update(faults_injected=len(acked_at_kill), submissions=total, acknowledged=len(acked),
                       acked_before_kill=acked_at_kill, found=found, duplicates=duplicates, lost=len(acked) - found, jobs_in_db=sum(by_name.values()),
                       answered_by_replay=replayed, http_5xx=counts["http_5xx"],
                       transport_errors=counts["transport_errors"])
        assert len(acked) == total
        assert found == len(acked)
        assert duplicates == 0 and set(by_name) == set(keys)
        assert not [k for k in counts if k.startswith("http_4")], counts
        assert counts["http_5xx"] == counts["http_503"], counts  # a restarting server says "retry", never crashes
        assert consistency_problems(svc.db_url) == []
    finally:
        stop.set()
        svc.close()
