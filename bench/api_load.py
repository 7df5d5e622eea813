"""Load on the REST API: concurrent clients submitting jobs (each with an Idempotency-Key, some of them
repeats) and reading job lists, against a `tinyforge serve --no-worker` on loopback, with SQLite and
with PostgreSQL. Prints sustained requests/s, submissions/s, p50/p99 latency and errors per run.

Peer in the same run: GET /healthz on the same server (the framework's floor: routing, middleware,
no database) -- the ratio says how much of the server's capacity a submission costs. Target (issue 8):
>= 300 submissions/s with p99 < 50 ms and zero errors.

    python bench/api_load.py                       # both databases, 10 s each
    python bench/api_load.py --db sqlite --seconds 5 --clients 16
    python bench/api_load.py --url http://127.0.0.1:8080 --token tf_...   # an existing server
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG = os.environ.get("TINYFORGE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_SUBMITS, TARGET_P99_MS = 300.0, 50.0


def job_spec(i: int) -> bytes:
    return json.dumps({"name": f"bench-{i}", "labels": {"bench": "api_load", "client": str(i % 8)},
                       "stages": [{"kind": "train", "config": {"model": {"preset": "micro"}, "steps": 10,
                                                               "micro_batch": 4}}]}).encode()


class Conn:
    """One keep-alive HTTP/1.1 connection (a lean client, so that the load generator does not eat the
    CPU the server needs on a small machine)."""

    def __init__(self, host: str, port: int, token: str):
        self.host, self.port, self.token = host, port, token
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> int:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", f"Authorization: Bearer {self.token}",
                f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await self.reader.readexactly(length)
        return status


async def client(conn: Conn, kind: str, stop_at: float, out: list, counter: list, run_tag: str):
    await conn.open()
    while time.perf_counter() < stop_at:
        counter[0] += 1
        i = counter[0]
        if kind == "health":
            op, method, path, body, headers = "health", "GET", "/healthz", b"", None
        elif i % 5 == 4:
            op, method, path, body, headers = "list", "GET", "/v1/jobs?limit=20", b"", None
        else:
            # 1 submission in 10 repeats an earlier key with the same body: answered 200, no new job
            n = i - 10 if i % 10 == 3 and i > 10 else i
            op, method, path = "submit", "POST", "/v1/jobs"
            body, headers = job_spec(n), {"Idempotency-Key": f"{run_tag}-{n}"}
        t0 = time.perf_counter()
        try:
            status = await conn.request(method, path, body, headers)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            status = 599
            await conn.open()
        out.append((op, time.perf_counter() - t0, status))


async def load(host: str, port: int, token: str, clients: int, seconds: float, kind: str) -> list:
    out: list = []
    counter = [0]
    tag = secrets.token_hex(4)
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(client(Conn(host, port, token), kind, stop_at, out, counter, tag) for _ in range(clients)))
    return out


def summarise(samples: list, seconds: float) -> dict:
    out = {}
    for op in sorted({s[0] for s in samples}):
        lat = sorted(s[1] for s in samples if s[0] == op)
        bad = [s for s in samples if s[0] == op and not (200 <= s[2] < 300)]
        out[op] = {"n": len(lat), "per_s": len(lat) / seconds, "p50_ms": 1000 * statistics.median(lat),
                   "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "errors": len(bad),
                   "statuses": sorted({s[2] for s in bad})}
    out["all"] = {"per_s": len(samples) / seconds, "errors": sum(v["errors"] for v in out.values())}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`tinyforge serve --no-worker` on a fresh database (a SQLite file, or a new PostgreSQL database)."""

    def __init__(self, db: str):
        self.home = Path(tempfile.mkdtemp(prefix="tf-bench-"))
        self.pg_db = None
        if db == "sqlite":
            url = f"sqlite:///{self.home / 'tinyforge.db'}"
        else:
            import psycopg
            self.pg_db = f"tf_bench_{os.getpid()}_{secrets.token_hex(3)}"
            with psycopg.connect(PG, autocommit=True) as c:
                c.execute(f'CREATE DATABASE "{self.pg_db}"')
            url = PG.rsplit("/", 1)[0] + "/" + self.pg_db
        self.port = free_port()
        env = {**os.environ, "TINYFORGE_HOME": str(self.home), "TINYFORGE_DATABASE_URL": url}
        for k in ("TINYFORGE_STAGE_SPECS", "TINYFORGE_ENGINE_COMMAND", "TINYFORGE_DATA_ROOTS"):
            env.pop(k, None)
        self.log = open(self.home / "serve.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyforge.cli", "serve", "--no-worker", "--port",
                                      str(self.port), "--log-level", "warning"], env=env, cwd=REPO,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((self.home / "serve.log").read_text())
                time.sleep(0.2)
        self.token = (self.home / "admin.token").read_text().strip()

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        if self.pg_db:
            import psycopg
            with psycopg.connect(PG, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.pg_db}" WITH (FORCE)')
        shutil.rmtree(self.home, ignore_errors=True)


def commit_latency_ms(directory: Path, n: int = 50) -> float:
    """Median time of a one-row SQLite commit (WAL, synchronous=NORMAL) in `directory`: the storage
    floor under every write the service makes, and a gauge of other I/O on the machine."""
    import sqlite3
    path = directory / "probe.db"
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("CREATE TABLE t (x)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO t VALUES (?)", (i,))
        c.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    c.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return 1000 * statistics.median(times)


def run(db: str, host: str, port: int, token: str, clients: int, seconds: float) -> dict:
    asyncio.run(load(host, port, token, clients, 1.0, "mixed"))  # warm-up: connections, caches, first pages
    health = summarise(asyncio.run(load(host, port, token, clients, seconds / 2, "health")), seconds / 2)
    mixed = summarise(asyncio.run(load(host, port, token, clients, seconds, "mixed")), seconds)
    return {"db": db, "health": health, "mixed": mixed}


def report(r: dict, clients: int) -> None:
    m, h = r["mixed"], r["health"]["health"]
    print(f"\n== {r['db']}: {clients} concurrent clients, mixed load (80% submit with Idempotency-Key, 20% list)")
    print(f"{'op':8} {'count':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for op in ("submit", "list"):
        if op in m:
            s = m[op]
            print(f"{op:8} {s['n']:7d} {s['per_s']:8.1f} {s['p50_ms']:8.2f} {s['p99_ms']:8.2f} {s['errors']:7d}"
                  + (f"  statuses {s['statuses']}" if s["statuses"] else ""))
    print(f"{'all':8} {'':7} {m['all']['per_s']:8.1f} {'':8} {'':8} {m['all']['errors']:7d}")
    print(f"peer: GET /healthz alone {h['per_s']:.1f} req/s (p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms); "
          f"mixed req/s / healthz req/s = {m['all']['per_s'] / h['per_s']:.2f}")
    sub = m.get("submit", {"per_s": 0, "p99_ms": float("inf"), "errors": 1})
    ok = sub["per_s"] >= TARGET_SUBMITS and sub["p99_ms"] < TARGET_P99_MS and m["all"]["errors"] == 0
    print(f"target: submissions/s {sub['per_s']:.1f} / {TARGET_SUBMITS:.0f} = {sub['per_s'] / TARGET_SUBMITS:.2f}x; "
          f"submit p99 {sub['p99_ms']:.1f} ms vs {TARGET_P99_MS:.0f} ms; errors {m['all']['errors']} -> "
          f"{'MET' if ok else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--url", default=None, help="an already running server (skips starting one)")
    ap.add_argument("--token", default=os.environ.get("TINYFORGE_TOKEN"))
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    results = []
    probe_dir = Path(tempfile.mkdtemp(prefix="tf-bench-probe-"))
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, SQLite commit "
          f"{commit_latency_ms(probe_dir):.2f} ms (median, {probe_dir.parent}) before the run; other work on "
          "the machine lowers every figure")
    shutil.rmtree(probe_dir, ignore_errors=True)
    if args.url:
        host, port = args.url.split("://")[1].rstrip("/").split(":")
        results.append(run("given server", host, int(port), args.token, args.clients, args.seconds))
        report(results[-1], args.clients)
    else:
        for db in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
            server = Server(db)
            try:
                results.append(run(db, "127.0.0.1", server.port, server.token, args.clients, args.seconds))
            finally:
                server.close()
            report(results[-1], args.clients)
    if len(results) == 2:
        a, b = (r["mixed"].get("submit", {}).get("per_s", 0) for r in results)
        print(f"\npostgresql / sqlite submissions/s = {b / a:.2f}" if a else "")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
