"""The service tests' fake engine (tests/service/fake_engine.py), plus one side effect per execution: a
line `JOB_ID ATTEMPT PID` appended to $CHAOS_SIDE_EFFECTS, so a test can count how often each job's
stage really ran (O_APPEND: concurrent executions never interleave a line)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
import fake_engine  # noqa: E402

if __name__ == "__main__":
    fd = os.open(os.environ["CHAOS_SIDE_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{os.environ.get('TINYFORGE_JOB_ID')} {os.environ.get('TINYFORGE_ATTEMPT')} {os.getpid()}\n".encode())
    os.close(fd)
    sys.exit(fake_engine.main(sys.argv[1:]))
