"""`tinyforge jobs`: the API client for people and CI pipelines.

`submit FILE --wait` exits 0 when the job succeeded, 1 when it failed, 3 when it was cancelled, and
2 when the spec was refused -- so a pipeline step fails exactly when the job does. A log follower
(`--follow`, `logs -f`) that cannot reach the server for `--reconnect-for` seconds exits 4."""
from __future__ import annotations

import sys
import time

import click

from service.api.schemas import JobOut
from service.client import ApiError, Backoff, Client, FollowGaveUp, default_token, format_detail

EXIT = {"succeeded": 0, "failed": 1, "cancelled": 3}


def _client(ctx) -> Client:
    return ctx.obj


def _fmt_time(t):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _line(job: JobOut) -> str:
    step = f"{job.step}/{job.total_steps}" if job.total_steps else (job.step or "")
    stage = job.current_stage or ""
    extra = job.pending_reason or job.failure_reason or ""
    return f"{job.id}  {job.status:9}  {job.name[:30]:30}  {stage:10} {str(step):>11}  {extra[:80]}"


def _json(model) -> str:
    return model.model_dump_json(indent=2, exclude_unset=True)  # as the server sent it


@click.group()
@click.option("--url", envvar="TINYFORGE_URL", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", envvar="TINYFORGE_TOKEN", default=None,
              help="API token (env TINYFORGE_TOKEN; default: the admin token in TINYFORGE_HOME)")
@click.option("--reconnect-for", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="seconds a log follower keeps reconnecting (with backoff) to an unreachable server; then exit 4")
@click.pass_context
def jobs(ctx, url, token, reconnect_for):
    """Submit and watch jobs through the REST API."""
    ctx.obj = Client(url, token or default_token(), backoff=Backoff(give_up_s=reconnect_for))


def _print_logs(client: Client, job_id: str) -> None:
    def told(why: str, delay: float) -> None:
        click.echo(f"log stream lost ({why}); reconnecting in {delay:.1f} s", err=True)
    try:
        for line in client.follow_logs(job_id, on_retry=told):
            click.echo(f"[{line.stage or '-'}] {line.line}")
    except FollowGaveUp as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(4)


def _wait(client: Client, job_id: str, follow: bool) -> JobOut:
    last = None
    if follow:
        _print_logs(client, job_id)
    while True:
        job = client.get(job_id)
        summary = (job.status, job.current_stage, job.step)
        if summary != last:
            click.echo(_line(job), err=True)
            last = summary
        if job.status in EXIT:
            return job
        time.sleep(2)


@jobs.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--idempotency-key", default=None, help="repeat-safe submission (for example the commit id)")
@click.option("--wait", is_flag=True, help="wait for the end; the exit code reflects the outcome")
@click.option("--follow", is_flag=True, help="with --wait: print the logs as they come")
@click.option("--plan", is_flag=True, help="only validate and show the expanded stages")
@click.pass_context
def submit(ctx, file, idempotency_key, wait, follow, plan):
    """Submit the job spec in FILE (YAML or JSON)."""
    client = _client(ctx)
    try:
        job, status = client.submit(file, idempotency_key, plan)
    except ApiError as exc:
        click.echo(f"refused (HTTP {exc.status}):\n{format_detail(exc.detail, exc.errors)}", err=True)
        sys.exit(2 if 400 <= exc.status < 500 else 4)
    if plan:
        click.echo(_json(job))
        return
    click.echo(job.id)
    click.echo(("submitted: " if status == 201 else "already submitted with this key: ") + _line(job), err=True)
    if wait:
        job = _wait(client, job.id, follow)
        if job.status != "succeeded":
            click.echo(f"job {job.id} {job.status}: {job.failure_reason or ''}", err=True)
        sys.exit(EXIT[job.status])


@jobs.command("ls")
@click.option("--status", default=None, help="comma-separated")
@click.option("--name", default=None)
@click.option("--label", multiple=True, help="key or key=value")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def ls(ctx, status, name, label, limit):
    """List jobs, newest first."""
    page = _client(ctx).list(status=status, name=name, label=list(label), limit=limit)
    for job in page.items:
        click.echo(_line(job))


@jobs.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx, job_id, as_json):
    """A job's stages, attempts and state."""
    try:
        job = _client(ctx).get(job_id)
    except ApiError as exc:
        raise click.ClickException(str(exc))
    if as_json:
        click.echo(_json(job))
        return
    click.echo(_line(job))
    for st in job.stages:
        step = f"{st.step}/{st.total_steps}" if st.total_steps else ""
        click.echo(f"  stage {st.name:10} {st.kind:9} {st.status:9} {step}")
    for a in job.attempts or []:
        click.echo(f"  attempt {a.number}: {a.status:9} worker={a.worker_id or '-'} "
                   f"{a.failure_class or ''} {a.failure_reason or ''}")


@jobs.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="keep streaming until the job ends")
@click.pass_context
def logs(ctx, job_id, follow):
    """Print a job's log lines."""
    client = _client(ctx)
    try:
        if follow:
            _print_logs(client, job_id)
        else:
            after = 0
            while True:
                page = client.logs(job_id, after)
                for line in page.lines:
                    click.echo(f"[{line.stage or '-'}] {line.line}")
                if not page.lines:
                    break
                after = page.next_after
    except ApiError as exc:
        raise click.ClickException(str(exc))


@jobs.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx, job_id):
    """Cancel a job (a running stage gets SIGTERM, then SIGKILL after the grace period)."""
    try:
        click.echo(_line(_client(ctx).cancel(job_id)))
    except ApiError as exc:
        raise click.ClickException(str(exc))


@jobs.command()
@click.argument("job_id")
@click.pass_context
def retry(ctx, job_id):
    """Run a failed or cancelled job again (finished stages are kept)."""
    try:
        click.echo(_line(_client(ctx).retry(job_id)))
    except ApiError as exc:
        raise click.ClickException(str(exc))
