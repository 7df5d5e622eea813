"""`tinyforge demo`: the README's main job, run the way a team would run it.

It starts `tinyforge serve` (SQLite, one embedded worker) on a free loopback port with its state in
TINYFORGE_HOME (default ./.tinyforge), submits examples/demo-recipe.yaml through `POST /v1/jobs`,
follows the job through the API, prints a table of the stages and stops the server. The state stays:
`tinyforge serve --home .tinyforge` shows the same job in the dashboard. The demo is a client of the
service; it imports nothing of the engine (`--engine-only` runs the engine's quick demo as a command)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml

from engine import cpu_load
from service.client import Client
from service.recipe import deep_merge

REPO = Path(__file__).resolve().parents[2]
DEMO_SPEC = REPO / "examples" / "demo-recipe.yaml"
TERMINAL = ("succeeded", "failed", "cancelled")

# --quick: the same stages at test size on the bundled sample (about a minute of work on 2 cores)
_SHORT = {"steps": 20, "micro_batch": 4, "batch_size": 8, "seq_len": 64, "eval_every": 10, "eval_batches": 2,
          "checkpoint_every": 10, "log_every": 5}
QUICK = {"name": "demo-recipe-quick", "recipe": {
    "data": {"sources": ["data/sample"], "val_fraction": 0.05},
    "parent": {"train": {**_SHORT, "model": {"preset": "micro"}}},
    "inherit": {"child": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_kv_head": 1, "ffn_hidden": 64},
                "calib": {"batches": 2, "seq_len": 64}, "eval_batches": 2},
    "round1": {**_SHORT, "optim": {"schedule_steps": 30}},
    "round2": {**_SHORT, "steps": None},
    "scratch": {**_SHORT, "steps": 30},
    "eval": {"batches": 2, "micro_batch": 4}}}


def _rel(path) -> str:
    """A path as the user would type it: relative under the working directory, else absolute."""
    p = Path(path).resolve()
    return str(p.relative_to(Path.cwd())) if p.is_relative_to(Path.cwd()) else str(p)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the demo dies, however it dies (Linux prctl)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedService:
    """`tinyforge serve` in a subprocess; its output goes to HOME/demo-serve.log, not the terminal."""

    def __init__(self, home: Path, port: int, threads: int | None = None):
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = home / "demo-serve.log"
        env = {**os.environ, "TINYFORGE_HOME": str(home)}
        if threads:  # torch's intra-op threads in every stage process
            env["OMP_NUM_THREADS"] = str(threads)
        env.pop("TINYFORGE_TOKEN", None)  # the demo uses this home's admin token
        self._log = open(self.log_path, "ab")
        # cwd: relative paths in the spec (data/sample) resolve against the repository
        # its own session: a Ctrl-C reaches only the demo, which cancels the job before stopping the server
        self.proc = subprocess.Popen([sys.executable, "-m", "tinyforge.cli", "serve", "--home", str(home),
                                      "--port", str(port), "--log-level", "warning"],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise click.ClickException(f"tinyforge serve exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise click.ClickException(f"tinyforge serve not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        """SIGTERM: a stage still running is preempted and requeued (the next `serve` resumes it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ------------------------------------------------------------------ following the job

def _clock(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _duration(stage: dict) -> float | None:
    if not stage.get("started_at"):
        return None
    return (stage.get("finished_at") or time.time()) - stage["started_at"]


def _last_loss(client: Client, job_id: str, stage: str) -> float | None:
    series = client.metrics(job_id, keys="loss", stage=stage, max_points=20000).series
    best = None  # the newest point of the train split, else of any split
    for s in series:
        if s.points and (best is None or s.split == "train"):
            best = s.points[-1][1]
    return best


def _progress_line(job: dict, stage: dict, loss: float | None) -> str:
    step = f"step {stage['step']}/{stage['total_steps']}" if stage.get("total_steps") else (stage.get("phase") or "")
    parts = [f"[{stage['name']}]", stage["status"], step]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if stage.get("eta_s") is not None and stage["status"] == "running":
        parts.append(f"eta {_clock(stage['eta_s'])}")
    parts.append(f"elapsed {_clock(time.time() - job['created_at'])}")
    return "  ".join(p for p in parts if p)


def _live_table(job: dict, losses: dict):
    from rich.table import Table
    t = Table(title=f"job {job['id']}  {job['name']}  {job['status']}  "
                    f"elapsed {_clock(time.time() - job['created_at'])}", title_justify="left")
    for col in ("stage", "kind", "status", "step", "loss", "eta", "time"):
        t.add_column(col, justify="right" if col in ("step", "loss", "eta", "time") else "left")
    for st in job["stages"]:
        step = f"{st['step']}/{st['total_steps']}" if st.get("total_steps") else (st.get("phase") or "")
        loss = losses.get(st["name"])
        t.add_row(st["name"], st["kind"], st["status"], step, "" if loss is None else f"{loss:.4f}",
                  _clock(st.get("eta_s")) if st["status"] == "running" else "", _clock(_duration(st)))
    return t


def follow(client: Client, job_id: str, live: bool, poll_s: float = 1.0, alive=lambda: True) -> dict:
    """Poll the job until it ends; a rich live table on a terminal, plain progress lines otherwise."""
    import httpx
    losses: dict[str, float] = {}
    printed: dict[str, tuple] = {}
    last_print = 0.0
    job: dict = {}

    def refresh() -> dict:
        nonlocal job
        try:
            job = client.get(job_id).model_dump(exclude_unset=True)  # the tables below read the JSON shape
            for st in job["stages"]:
                if st["status"] == "running" or (st["status"] == "succeeded" and st["name"] not in losses
                                                  and st["kind"] in ("train", "rounds")):
                    loss = _last_loss(client, job_id, st["name"])
                    if loss is not None:
                        losses[st["name"]] = loss
        except httpx.TransportError:  # a slow answer on a busy machine: keep the last view, ask again
            if not alive():
                raise
        return job

    while not refresh():
        time.sleep(poll_s)
    if live:
        from rich.live import Live
        with Live(_live_table(job, losses), refresh_per_second=2, transient=False) as view:
            while job["status"] not in TERMINAL:
                time.sleep(poll_s)
                view.update(_live_table(refresh(), losses))
        return job
    while True:
        refresh()
        now = time.time()
        for st in job["stages"]:
            if st["status"] == "pending":
                continue
            tenth = (10 * (st.get("step") or 0) // st["total_steps"]) if st.get("total_steps") else 0
            key = (st["status"], tenth)
            # a line when a stage starts, ends, passes each tenth of its steps, or every 30 s while running
            if printed.get(st["name"]) != key or (st["status"] == "running" and now - last_print > 30):
                click.echo(_progress_line(job, st, losses.get(st["name"])))
                printed[st["name"]], last_print = key, now
        if job["status"] in TERMINAL:
            return job
        time.sleep(poll_s)


# ------------------------------------------------------------------ the results table

def _fmt(v, digits=4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def key_figures(stage: dict) -> str:
    """The few numbers that say what a stage did (from its recorded summary)."""
    s = stage.get("summary") or {}
    kind = stage["kind"]
    if not s:
        return ""
    if kind == "tokenizer":
        out = f"vocab {_fmt(s.get('original_vocab'))} -> {_fmt(s.get('vocab'))} pieces"
        if s.get("coverage") is not None:
            out += f", coverage {s['coverage']:.2%}"
        return out
    if kind == "inherit":
        out = f"params {_fmt(s.get('parent_params'))} -> {_fmt(s.get('child_params'))}"
        if s.get("layers") is not None:
            out += f", layers kept {s['layers']}"
        if s.get("inherited_loss") is not None:
            out += f", held-out loss {s['inherited_loss']:.4f}"
        if s.get("random_init_loss") is not None:
            out += f" (random init {s['random_init_loss']:.4f})"
        return out
    if kind == "export":
        return "Hugging Face Llama directory"
    parts = []
    if s.get("params") is not None:
        parts.append(f"params {_fmt(s['params'])}")
    if s.get("steps") is not None:
        parts.append(f"steps {_fmt(s['steps'])}")
    if s.get("tokens") is not None:
        parts.append(f"tokens {_fmt(s['tokens'])}")
    if s.get("val_loss") is not None:
        parts.append(f"val loss {s['val_loss']:.4f}")
    if s.get("val_bpb") is not None:
        parts.append(f"val bpb {s['val_bpb']:.4f}")
    return ", ".join(parts)


def results_table(job: dict) -> str:
    rows = [("stage", "kind", "status", "time", "key figures")]
    rows += [(st["name"], st["kind"], st["status"], _clock(_duration(st)), key_figures(st)) for st in job["stages"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j != 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     + "  " + r[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * max(len(x[4]) for x in rows))
    return "\n".join(lines)


def _artifact(client: Client, job_id: str, stage: str, name: str) -> str | None:
    for a in client.artifacts(job_id):
        if a.stage == stage and a.name == name:
            return a.path
    return None


def report(client: Client, job: dict, home: Path, url: str) -> str:
    by = {st["name"]: st for st in job["stages"]}
    lines = ["", results_table(job), ""]
    total = (job.get("finished_at") or time.time()) - job["created_at"]
    lines.append(f"job {job['id']} {job['status']} in {_clock(total)}"
                 + (f": {job['failure_reason']}" if job.get("failure_reason") else ""))
    final = (by.get("eval") or {}).get("summary") or {}
    if final:
        lines.append(f"final model: {final.get('params', 0):,} parameters, held-out loss {final['val_loss']:.4f} "
                     f"nats/token, perplexity {final['val_ppl']:.2f}, {final['val_bpb']:.4f} bits/byte")
    hf_dir = _artifact(client, job["id"], "export", "hf_model")
    if hf_dir:
        lines.append(f"Hugging Face model: {_rel(hf_dir)}")
    if job.get("comparison"):
        lines.append(job["comparison"]["text"])
    checkpoint = ((by.get("round2") or {}).get("summary") or {}).get("checkpoint")
    if checkpoint:
        lines.append(f"engine checkpoint: {_rel(checkpoint)} (tinyforge generate --checkpoint ... --prompt ...)")
    lines.append(f"dashboard: {url}/ui/#/jobs/{job['id']} (stopped with the demo; bring it back with "
                 f"`tinyforge serve --home {_rel(home)}`, then http://127.0.0.1:8080/ui/, "
                 f"token in {_rel(home / 'admin.token')})")
    return "\n".join(lines)


# ------------------------------------------------------------------ the command

def stage_threads(threads: int | None, busy: float | None = None) -> tuple[int | None, str]:
    """Threads per stage, and why. On a machine already busy with other work, two threads that wait for
    each other at every operator run several times slower than one (measured on 2 cores: 7.0k vs 0.7-1.5k
    tokens/s with a load average of 4-7), so a busy machine gets one; an idle one all its cores. Busy is
    measured now (engine/cpu_load.py), not by the 1-minute load average, which still read 1.7 on 2 idle cores
    just after a benchmark ended and made a whole demo run single-threaded: 7:31 against 5:10 (a 2-core Zen 4)."""
    if threads or "OMP_NUM_THREADS" in os.environ:
        return threads, ""
    why = cpu_load.too_busy_for_threads(os.cpu_count() or 1, busy)
    return (1, f"; {why}: one thread per stage (--threads to choose)") if why else (None, "")


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def cancel(client: Client, job_id: str, timeout: float = 60) -> None:
    """Cancel and wait for the end: the stage gets SIGTERM and checkpoints before the server stops."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
        signal.signal(sig, signal.SIG_IGN)
    try:
        client.cancel(job_id)
        deadline = time.time() + timeout
        while client.get(job_id).status not in TERMINAL and time.time() < deadline:
            time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - the server is being stopped anyway
        click.echo(f"cancel: {exc}", err=True)


@click.command()
@click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEMO_SPEC,
              show_default=True, help="the recipe job to submit")
@click.option("--quick", is_flag=True, help="the same stages at test size (about a minute)")
@click.option("--home", type=click.Path(path_type=Path), default=None,
              help="state directory (env TINYFORGE_HOME; default ./.tinyforge)")
@click.option("--port", type=int, default=0, help="API port (default: a free one)")
@click.option("--live/--plain", default=None, help="progress display (default: live on a terminal)")
@click.option("--threads", type=int, default=None,
              help="torch threads per stage (default: all cores, or 1 when the machine is already busy)")
@click.option("--engine-only", is_flag=True, help="the engine's quick demo instead: train `tiny` without the service")
@click.option("--steps", type=int, default=300, show_default=True, help="with --engine-only: training steps")
def demo(spec_path, quick, home, port, live, threads, engine_only, steps):
    """Run the whole recipe through the service on the bundled corpus and print what each stage gave."""
    home = (home or Path(os.environ.get("TINYFORGE_HOME") or ".tinyforge")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    if engine_only:  # the engine is a command to the service side, never an import
        env = {**os.environ, "TINYFORGE_HOME": str(home)}
        sys.exit(subprocess.call([sys.executable, "-m", "engine.commands.demo", "--steps", str(steps)], env=env))
    if quick:
        spec = deep_merge(yaml.safe_load(spec_path.read_text()), QUICK)
        spec_path = home / "demo" / "quick-recipe.yaml"
        spec_path.parent.mkdir(exist_ok=True)
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    live = sys.stdout.isatty() if live is None else live
    signal.signal(signal.SIGTERM, _interrupted)  # `kill` ends the demo as Ctrl-C does: job cancelled
    threads, why = stage_threads(threads)
    svc = EmbeddedService(home, port or free_port(), threads)
    click.echo(f"tinyforge serve on {svc.url} (SQLite and runs in {_rel(home)}, log "
               f"{_rel(svc.log_path)}){why}")
    job = None
    try:
        svc.wait_ready()
        client = Client(svc.url, (home / "admin.token").read_text().strip())
        job = client.submit(spec_path)[0].model_dump(exclude_unset=True)
        click.echo(f"submitted {_rel(spec_path)} as job {job['id']}: "
                   + " -> ".join(st["name"] for st in job["stages"]))
        job = follow(client, job["id"], live, alive=lambda: svc.proc.poll() is None)
        click.echo(report(client, job, home, svc.url))
    except KeyboardInterrupt:
        if job is not None:  # cancelled rather than left queued, so the next demo does not resume it first
            cancel(client, job["id"])
            click.echo(f"\ninterrupted: job {job['id']} cancelled (a training stage keeps its checkpoint); with "
                       f"`TINYFORGE_HOME={_rel(home)} tinyforge serve` running, `TINYFORGE_HOME={_rel(home)} "
                       f"tinyforge jobs retry {job['id']}` resumes it", err=True)
        sys.exit(130)
    finally:
        svc.stop()
    sys.exit(0 if job["status"] == "succeeded" else 1)
