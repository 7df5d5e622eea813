"""wait_reason: each situation has its code, and only idle/busy count as schedulable (jobs.plan decides on
the code, never on the wording)."""
from service.services.placement import WAIT_CODES, WorkerInfo, wait_reason

CPU2 = WorkerInfo("w1", {"cpu": 2}, ("local",), busy=False)


def test_each_situation_has_its_code():
    cases = [
        ([], "cpu", 1, "local", "no_worker", "no worker is running"),
        ([CPU2], "cpu", 1, "slurm", "no_launcher", "asks for launcher slurm; running workers offer only: local"),
        ([CPU2], "cpu", 4, "local", "no_device", "asks for 4 cpu devices per node; the largest running worker "
                                                 "has 2 cpu"),
        ([CPU2], "npu", 1, "local", "no_device", "the largest running worker has no npu"),
        ([CPU2], "cpu", 2, "local", "idle", "waiting to be claimed by one of 1 idle fitting worker(s)"),
        ([WorkerInfo("w1", {"cpu": 2}, ("local",), busy=True)], "auto", 1, "local", "busy",
         "all 1 fitting worker(s) are busy"),
    ]
    for workers, backend, n, launcher, code, text in cases:
        reason = wait_reason(backend, n, launcher, workers)
        assert reason.code == code and text in reason.text, (code, reason)
        assert reason.code in WAIT_CODES
        assert reason.schedulable == (code in ("idle", "busy"))


def test_queue_position_is_in_the_text_not_the_code():
    reason = wait_reason("cpu", 1, "local", [CPU2], ahead=3)
    assert reason.code == "idle" and reason.text.endswith("; 3 job(s) ahead in the queue")
