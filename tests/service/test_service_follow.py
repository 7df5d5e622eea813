"""Log following against a server that goes away: the client reconnects with capped exponential
backoff and jitter (no busy loop), honours the SSE `retry:` field, resumes with Last-Event-ID, and
gives up with exit code 4 and a clear message after `--reconnect-for` seconds."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

from service.api.schemas import LogLineOut
from service.client import Backoff, Client
from tests.support.service import REPO, Service, stage


class CountingListener:
    """A loopback TCP server on `port` that records each connection and answers it with `reply`
    (nothing: the connection is closed at once, the worst case for a client that retries)."""

    def __init__(self, port: int, reply: bytes = b""):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.reply, self.accepted, self.requests = reply, [], []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            with conn:
                if self.reply:
                    conn.settimeout(2)
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request.decode(errors="replace"))
                    conn.sendall(self.reply)

    def close(self):
        self.sock.close()


def test_follower_backs_off_when_the_server_goes_away_then_exits_4(tmp_path):
    svc = Service.on_sqlite(tmp_path)
    try:
        job = svc.submit({"name": "stays-queued", "stages": [stage("train", steps=3)]})  # no worker: never ends
        env = {**svc.env, "TINYFORGE_URL": svc.url, "TINYFORGE_TOKEN": svc.token}
        follower = subprocess.Popen([sys.executable, "-m", "tinyforge.cli", "jobs", "--reconnect-for", "6", "logs",
                                     "-f", job["id"]], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        time.sleep(4)  # the follower starts and holds the stream open
        assert follower.poll() is None, follower.communicate()
    finally:
        svc.proc.send_signal(signal.SIGKILL)  # the server goes away without a goodbye
        svc.close()
    listener = CountingListener(svc.port)  # then whatever is on the port drops every connection at once
    try:
        t0 = time.monotonic()
        out, err = follower.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        listener.close()
    assert follower.returncode == 4, (out, err)
    assert "gave up following job" in err and "unreachable for" in err, err
    attempts = listener.accepted
    # backoff 0.5 s doubling, each step jittered within [half, whole]: 0.25-0.5, 0.5-1, 1-2, 2-4 s ...
    assert 3 <= len(attempts) <= 8, (len(attempts), err)
    assert len(attempts) / elapsed < 2, (len(attempts), elapsed)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert min(gaps) >= 0.2 and gaps[-1] > gaps[0], gaps  # never back to back, and growing
    assert 5 <= elapsed < 20, elapsed  # gave up after --reconnect-for, not at once and not never
    assert err.count("reconnecting in") >= len(attempts) - 1, err


def test_follower_honours_retry_field_and_resumes_after_the_last_event(tmp_path):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    event = (b"retry: 1200\nid: 7\nevent: log\n"
             b'data: {"id": 7, "time": 1.5, "stage": "train", "attempt": 1, "stream": "stdout",\n'
             b'data:  "line": "two data lines, one event"}\n\n')
    reply = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
             b"Connection: close\r\n\r\n" % len(event)) + event
    listener = CountingListener(number, reply)
    client = Client(f"http://127.0.0.1:{number}", "tok", backoff=Backoff(give_up_s=30))
    try:
        got = []
        for line in client.follow_logs("j1"):
            got.append(line)
            if len(got) == 3:
                break
    finally:
        listener.close()
    assert got == [LogLineOut(id=7, time=1.5, stage="train", attempt=1, stream="stdout",
                              line="two data lines, one event")] * 3  # parsed into the server's model
    gaps = [b - a for a, b in zip(listener.accepted, listener.accepted[1:])]
    assert len(gaps) == 2 and all(0.6 - 0.05 <= g <= 1.2 + 0.5 for g in gaps), gaps  # the server's retry: 1.2 s
    assert "last-event-id: 0" in listener.requests[0].lower()
    assert all("last-event-id: 7" in r.lower() for r in listener.requests[1:]), listener.requests
