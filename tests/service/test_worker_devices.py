"""Each stage gets its own accelerators (service/worker/devices.py): two workers on one host never run
on the same device, the stage sees only its devices (CUDA_VISIBLE_DEVICES), and the job shows them."""
from __future__ import annotations

import pytest

from service.worker import devices
from tests.support.service import stage


def fake_dev(tmp_path, *names):
    for n in names:
        (tmp_path / n).touch()
    return str(tmp_path)


def test_candidates_come_from_the_workers_visible_devices_else_the_device_nodes(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidia10", "nvidiactl", "nvidia-uvm", "davinci3", "davinci_manager")
    assert devices.candidates("cuda", {}, dev) == ["0", "1", "10"]
    assert devices.candidates("npu", {}, dev) == ["3"]
    assert devices.candidates("cuda", {"CUDA_VISIBLE_DEVICES": "2, 3"}, dev) == ["2", "3"]
    assert devices.candidates("npu", {"ASCEND_RT_VISIBLE_DEVICES": ""}, dev) == []
    assert devices.stage_kind("auto", {}, dev) == "npu" and devices.stage_kind("cuda", {}, dev) == "cuda"
    (tmp_path / "cpu_only").mkdir()
    assert devices.stage_kind("auto", {}, str(tmp_path / "cpu_only")) is None
    assert devices.stage_kind("cpu", {}, dev) is None


def test_allocations_on_one_host_never_overlap_and_are_released(tmp_path):
    env, locks = {"CUDA_VISIBLE_DEVICES": "0,1,2"}, tmp_path / "locks"
    a = devices.allocate("cuda", 2, locks, env)
    b = devices.allocate("cuda", 1, locks, env)
    assert a.ids == ["0", "1"] and b.ids == ["2"] and a.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert devices.allocate("cuda", 1, locks, env) is None  # all held
    a.release()
    c = devices.allocate("cuda", 2, locks, env)
    assert c.ids == ["0", "1"]
    with pytest.raises(ValueError, match=r"needs 4 cuda device\(s\); this worker has 3"):
        devices.allocate("cuda", 4, locks, env)
    b.release()
    c.release()


def test_two_workers_sharing_a_hosts_gpus_run_their_stages_on_different_devices(service):
    # both workers see the same two GPUs, as `docker compose up --scale worker=2` on a 2-GPU host does
    for name in ("a", "b"):
        service.worker(name, devices="cpu=2,cuda=2", CUDA_VISIBLE_DEVICES="0,1")
    jobs = [service.submit({"name": f"j{i}", "resources": {"backend": "cuda", "devices_per_node": 1},
                            "stages": [stage(steps=40, step_time=0.05)]}) for i in range(2)]
    for job in jobs:  # both running at once, one per worker
        service.wait(job["id"], until=lambda j: j["status"] == "running" and (j.get("step") or 0) >= 1)
    done = [service.wait(job["id"]) for job in jobs]
    assert all(j["status"] == "succeeded" for j in done), done
    seen = [j["stages"][0]["summary"]["visible_devices"] for j in done]
    assert sorted(seen) == ["0", "1"], seen  # each stage saw only its own device
    for job, visible in zip(done, seen):
        shown = job["resources"]["devices"]["train"]
        assert shown["kind"] == "cuda" and shown["ids"] == [visible] and shown["env"] == {"CUDA_VISIBLE_DEVICES": visible}
