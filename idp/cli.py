"""The ``idhub`` command line (see the contract): serve, db upgrade, apply, audit export/verify/prune."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime

import click

from config.settings import SettingsError, load_settings


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"idhub: configuration error: {exc}", err=True)
        sys.exit(2)


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint=name) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# Memory-backed and shared, but only used through mkstemp/mkdtemp (private, random names).
_SHM = "/dev/shm"  # noqa: S108

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """idhub: identity hub and SSO gateway."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
def serve(host, port, workers, threads):
    """Serve the hub with gunicorn (a production WSGI server)."""
    settings = _settings()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shm = _SHM if os.path.isdir(_SHM) else None  # the metrics' mmapped files, written on every request
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="idhub-metrics-", dir=shm)
    from gunicorn.app.base import BaseApplication

    def child_exit(_server, worker):
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)

    class Server(BaseApplication):
        def load_config(self):
            for key, value in {
                "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "workers": workers,
                "threads": threads,
                "worker_class": "gthread",
                "timeout": 60,
                "graceful_timeout": 10,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
                "child_exit": child_exit,
                "limit_request_line": 8190,
                "limit_request_field_size": 8190,
                # The workers' heartbeat touches a file on every loop turn: keep it in memory, not on disk
                # (gunicorn's advice for containers; ~5 % of a worker's CPU on this disk).
                "worker_tmp_dir": _SHM if os.path.isdir(_SHM) else None,
            }.items():
                self.cfg.set(key, value)

        def load(self):
            from idp.app import create_app

            return create_app(settings)

    click.echo(f"idhub serving {settings.base_url} on http://{host}:{port} with {workers} worker(s)", err=True)
    Server().run()


@main.group()
def db():
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision):
    """Apply migrations to the configured database."""
    from idp.schema import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo("database is up to date", err=True)


@main.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def apply_cmd(files):
    """Validate config FILES, then apply all of them, or nothing (exit 2 on invalid input)."""
    from idp.configfile import ConfigError, apply, load_file, validate

    errors: list[str] = []
    workspaces: list[dict] = []
    for f in files:
        try:
            ws = validate(load_file(f), base_dir=os.path.dirname(os.path.abspath(f)))
            workspaces.extend(ws)
        except ConfigError as exc:
            prefix = f"{f}: " if len(files) > 1 else ""
            errors.extend(prefix + e for e in exc.errors)
    slugs = [w["slug"] for w in workspaces]
    for s in {s for s in slugs if slugs.count(s) > 1}:
        errors.append(f"workspace {s!r} is declared in more than one file")
    if errors:
        for e in errors:
            click.echo(e, err=True)
        click.echo(f"idhub: {len(errors)} error(s); nothing was applied", err=True)
        sys.exit(2)
    from idp.app import build_hub

    hub = build_hub(_settings())
    with hub.db() as session:
        report = apply(session, workspaces, hub.hasher)
        session.commit()
    for user_id in report.deactivated:  # a disabled account keeps no session (and its apps are logged out)
        hub.sessions.end_all(user_id, "deactivated")
    from idp.accounts import workspace_by_slug

    with hub.db() as session:
        for w in workspaces:
            ws = workspace_by_slug(session, w["slug"])
            hub.audit.record("admin.config.applied", workspace_id=ws.id, actor_email="idhub apply",
                             data={"files": [os.path.basename(f) for f in files]})
    for line in report.created:
        click.echo(f"created {line}")
    click.echo(f"applied {len(workspaces)} workspace(s)")


@main.group()
def audit():
    """The audit log."""


def _workspace(hub, slug):
    from idp.accounts import workspace_by_slug

    with hub.db() as session:
        ws = workspace_by_slug(session, slug)
    if ws is None:
        click.echo(f"idhub: no workspace {slug!r}", err=True)
        sys.exit(2)
    return ws


@audit.command("export")
@click.option("--workspace", "slug", required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True)
@click.option("--since")
@click.option("--until")
@click.option("--type", "types", multiple=True, help="event type (repeatable), e.g. auth.signin.failure")
def audit_export(slug, fmt, since, until, types):
    """Write a workspace's audit events to stdout."""
    from idp.app import build_hub

    since_t, until_t = _parse_time(since, "--since"), _parse_time(until, "--until")
    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    out = click.get_text_stream("stdout")
    for chunk in hub.audit.export(ws.id, fmt=fmt, since=since_t, until=until_t, types=list(types) or None):
        out.write(chunk)
    out.flush()


@audit.command("verify")
@click.option("--workspace", "slug", default=None, help="one workspace (default: every chain)")
def audit_verify(slug):
    """Recompute the hash chain; exit 1 if any event was altered, removed or reordered."""
    from idp.app import build_hub

    hub = build_hub(_settings())
    ws_id = _workspace(hub, slug).id if slug else None
    result = hub.audit.verify(ws_id)
    if result.ok:
        click.echo(f"audit log intact: {result.checked} event(s) verified")
        return
    click.echo(f"audit log TAMPERED: first bad event seq {result.first_bad_seq}: {result.reason}", err=True)
    sys.exit(1)


@audit.command("prune")
def audit_prune():
    """Delete events past each workspace's retention (by plan), keeping the chain verifiable."""
    from sqlalchemy import select

    from idp.app import build_hub
    from idp.audit import RETENTION_DAYS
    from idp.models import Workspace

    hub = build_hub(_settings())
    with hub.db() as session:
        workspaces = list(session.scalars(select(Workspace)))
    now = datetime.now(UTC)
    for ws in workspaces:
        n = hub.audit.prune(ws.id, RETENTION_DAYS.get(ws.plan, 30), now)
        click.echo(f"{ws.slug}: pruned {n} event(s) older than {RETENTION_DAYS.get(ws.plan, 30)} days")


if __name__ == "__main__":  # pragma: no cover
    main()
