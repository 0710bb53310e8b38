"""The ``idhub`` command line (see the contract): serve, db upgrade, apply, audit (export, verify, checkpoint, …)."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime

import click

from config.settings import SettingsError, load_settings
from idp import __version__


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
@click.version_option(__version__, "--version", "-V", prog_name="idhub", message="%(prog)s %(version)s")
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

    def when_ready(_server):
        if settings.maintenance_interval:
            _start_maintenance(settings.maintenance_interval)
        if settings.audit_webhook_url or settings.audit_stream_file:
            _start_audit_stream()

    class Server(BaseApplication):
        def load_config(self):
            for key, value in gunicorn_options(host, port, workers, threads).items():
                self.cfg.set(key, value)
            self.cfg.set("child_exit", child_exit)
            self.cfg.set("when_ready", when_ready)

        def load(self):
            from idp.app import create_app

            return create_app(settings)

    click.echo(f"idhub serving {settings.base_url} on http://{host}:{port} with {workers} worker(s)", err=True)
    Server().run()


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict:
    """gunicorn's settings for ``idhub serve``: its stock ``gthread`` worker (each worker a thread pool; idle
    keep-alive connections wait in the worker's event loop, not on a thread)."""
    return {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "limit_request_line": 8190,
        "limit_request_field_size": 8190,
        # The workers' heartbeat touches a file on every loop turn: keep it in memory, not on disk
        # (gunicorn's advice for containers; ~5 % of a worker's CPU on this disk).
        "worker_tmp_dir": _SHM if os.path.isdir(_SHM) else None,
    }


def _start_maintenance(interval: int) -> None:
    """From gunicorn's master: `idhub maintenance` in a child process every ``interval`` seconds (the first run a
    minute or so after start-up, jittered so that several nodes started together do not run it in step)."""
    import random
    import subprocess
    import threading
    import time

    def loop():
        time.sleep(min(interval, 60) + random.uniform(0, min(interval, 60)))
        while True:
            try:
                subprocess.run([sys.executable, "-m", "idp.cli", "maintenance", "--quiet"], timeout=interval,
                               check=False)
            except Exception as exc:  # a hung or failed run is retried at the next interval
                click.echo(f"idhub: maintenance run failed: {type(exc).__name__}", err=True)
            time.sleep(interval)

    threading.Thread(target=loop, name="idhub-maintenance", daemon=True).start()


def _start_audit_stream() -> None:
    """From gunicorn's master: `idhub audit stream` as a child process, restarted (after a pause) if it ends. Its
    cursors are durable, so a restart resumes where the last acknowledged batch ended."""
    import subprocess
    import threading
    import time

    def loop():
        while True:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "idp.cli", "audit", "stream"],
                                        env={**os.environ, "IDHUB_AUDIT_STREAM_PARENT": str(os.getpid())})
                proc.wait()
            except Exception as exc:
                click.echo(f"idhub: audit streamer failed: {type(exc).__name__}", err=True)
            time.sleep(5)

    threading.Thread(target=loop, name="idhub-audit-stream", daemon=True).start()


@main.command("maintenance")
@click.option("--quiet", is_flag=True, help="print nothing (the JSON log line still says what was done)")
def maintenance_cmd(quiet):
    """Housekeeping: expired rows, audit retention, OIDC purge, SAML metadata refresh (idhub serve runs it hourly)."""
    from idp import logs, maintenance
    from idp.wiring import build_hub

    settings = _settings()
    logs.configure(settings.log_level)  # JSON lines on stderr, as the server's: the run's result, failures
    result = maintenance.run(build_hub(settings))
    if not quiet:
        for job, what in result.items():
            click.echo(f"{job}: {what}")
    if any(isinstance(v, str) for v in result.values()):
        sys.exit(1)


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


def _session_end_listeners(hub) -> None:
    """Give a CLI hub the protocols' session-end listeners, as the server has (OIDC back-channel logout, SAML
    logout), with logout tokens posted before the command exits rather than from background threads."""
    from oidc import install as install_oidc
    from saml import install as install_saml

    install_oidc(hub).backchannel.dispatch = lambda fn: fn()
    install_saml(hub)


@main.command("apply")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def apply_cmd(files):
    """Validate config FILES, then apply all of them, or nothing (exit 2 on invalid input)."""
    from idp.configfile import ConfigError, apply_config, load_file, validate

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
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    # the protocols first: an app taken from someone (groups, members, assigned_groups) is logged out at once
    _session_end_listeners(hub)
    report = apply_config(hub, workspaces, before_logout=lambda: _session_end_listeners(hub))
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
@click.option("--readable", is_flag=True, help="the console's columns (docs/events.md): description, kind, outcome, "
              "the actor's e-mail, the target; without it, the events as recorded (for verification)")
def audit_export(slug, fmt, since, until, types, readable):
    """Write a workspace's audit events to stdout."""
    from idp.wiring import build_hub

    since_t, until_t = _parse_time(since, "--since"), _parse_time(until, "--until")
    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    out = click.get_text_stream("stdout")
    if readable:
        from admin.auditlog import Filters, export

        chunks = export(hub.db, ws.id, Filters(types=list(types), since=since_t, until=until_t), fmt)
    else:
        chunks = hub.audit.export(ws.id, fmt=fmt, since=since_t, until=until_t, types=list(types) or None)
    for chunk in chunks:
        out.write(chunk)
    out.flush()


@audit.command("verify")
@click.option("--workspace", "slug", default=None, help="one workspace (default: every chain)")
@click.option("--checkpoint", "checkpoint_file", type=click.File("r"), default=None,
              help="a signed checkpoint (from `idhub audit checkpoint` or the log): also fail on any truncation "
                   "or rewrite of the events it covers")
def audit_verify(slug, checkpoint_file):
    """Check the keyed hash chain; exit 1 if any event was altered, removed or reordered."""
    import json

    from idp.wiring import build_hub

    hub = build_hub(_settings())
    ws_id = _workspace(hub, slug).id if slug else None
    checkpoint = None
    if checkpoint_file is not None:
        try:
            checkpoint = json.loads(checkpoint_file.read())
        except ValueError:
            click.echo("idhub: the checkpoint file is not JSON", err=True)
            sys.exit(2)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("checkpoint"), dict):
            checkpoint = checkpoint["checkpoint"]  # a whole `audit.checkpoint` log line
        if ws_id is None and isinstance(checkpoint, dict):
            ws_id = checkpoint.get("workspace_id")
    result = hub.audit.verify(ws_id, checkpoint=checkpoint)
    if result.ok:
        pending = f", {result.unsealed} not sealed yet" if result.unsealed else ""
        click.echo(f"audit log intact: {result.checked} event(s) verified{pending}")
        return
    where = f"first bad event seq {result.first_bad_seq}: " if result.first_bad_seq is not None else ""
    click.echo(f"audit log TAMPERED: {where}{result.reason}", err=True)
    sys.exit(1)


@audit.command("checkpoint")
@click.option("--workspace", "slug", required=True)
def audit_checkpoint(slug):
    """Print a signed checkpoint of the workspace's chain (JSON); keep it outside the database."""
    import json

    from idp.wiring import build_hub

    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    click.echo(json.dumps(hub.audit.checkpoint(ws.id, ws.slug), sort_keys=True))


@audit.command("seal")
@click.option("--workspace", "slug", default=None, help="one workspace (default: every chain)")
def audit_seal(slug):
    """Seal events appended but not sealed yet (e.g. by a process that died); idhub maintenance does it too."""
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    n = hub.audit.seal(_workspace(hub, slug).id if slug else None)
    click.echo(f"sealed {n} event(s)")


@audit.command("prune")
def audit_prune():
    """Delete events past each workspace's retention (by plan), keeping the chain verifiable."""
    from sqlalchemy import select

    from idp.audit import RETENTION_DAYS
    from idp.models import Workspace
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    with hub.db() as session:
        workspaces = list(session.scalars(select(Workspace)))
    now = datetime.now(UTC)
    for ws in workspaces:
        n = hub.audit.prune(ws.id, RETENTION_DAYS.get(ws.plan, 30), now)
        click.echo(f"{ws.slug}: pruned {n} event(s) older than {RETENTION_DAYS.get(ws.plan, 30)} days")


@audit.command("stream")
@click.option("--once", is_flag=True, help="one pass: deliver what is there, then exit (1 if a sink failed)")
@click.option("--status", is_flag=True, help="print each sink's backlog (sealed events not yet delivered)")
def audit_stream(once, status):
    """Stream audit events to the SIEM webhook and/or JSON-lines file (`idhub serve` runs this when configured)."""
    import signal
    import threading

    from idp import logs
    from idp.auditstream import AuditStreamer, sinks_from_settings, workspaces_of
    from idp.wiring import build_hub

    settings = _settings()
    logs.configure(settings.log_level)
    sinks = sinks_from_settings(settings)
    if not sinks:
        click.echo("idhub: no audit sink configured (IDHUB_AUDIT_WEBHOOK_URL or IDHUB_AUDIT_STREAM_FILE)", err=True)
        sys.exit(2)
    hub = build_hub(settings)
    streamer = AuditStreamer(hub.db, hub.audit, sinks, workspaces_of(hub.db))
    if status:
        for name, backlog in streamer.lag().items():
            click.echo(f"{name}: {backlog} event(s) not yet delivered")
        return
    if once:
        result = streamer.run_once()
        click.echo(f"delivered {result.delivered} event(s) in {result.batches} batch(es)", err=True)
        sys.exit(1 if result.failed else 0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if parent := os.environ.get("IDHUB_AUDIT_STREAM_PARENT"):  # started by `idhub serve`: end with it

        def watch():
            while not stop.wait(1.0):
                if str(os.getppid()) != parent:
                    stop.set()

        threading.Thread(target=watch, name="idhub-audit-stream-parent", daemon=True).start()
    streamer.run(stop)


@main.command("export-config")
@click.option("--workspace", "slug", required=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write here instead of stdout")
def export_config(slug, output):
    """Write a workspace back out as a config file (secrets excluded: *_env references instead)."""
    import yaml

    from admin.export import export_workspace
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    with hub.db() as session:
        doc, env = export_workspace(session, ws)
    text = (f"# idhub export-config --workspace {slug}: secrets are not exported; before `idhub apply`, set "
            + (", ".join(env) if env else "nothing") + "\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
    hub.audit.record("admin.config.exported", workspace_id=ws.id, actor_email="idhub export-config")


@main.group()
def oidc():
    """The OpenID Connect provider."""


@oidc.command("purge")
def oidc_purge():
    """Delete expired OIDC codes and tokens, retired signing keys past their overlap, expired one-time values."""
    from idp.wiring import build_hub
    from oidc import install

    counts = install(build_hub(_settings())).purge()
    click.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))


@oidc.command("rotate-keys")
@click.option("--workspace", "slug", required=True, help="the workspace whose signing key is replaced")
@click.option("--alg", type=click.Choice(["RS256", "ES256"]), default="RS256", show_default=True,
              help="which of the workspace's two signing keys")
def oidc_rotate_keys(slug, alg):
    """Make a new signing key (printed: its kid); the previous one stops signing now and stays in the JWKS for
    the overlap (two days), so tokens it signed still verify. Audited."""
    from idp.wiring import build_hub
    from oidc import install

    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    click.echo(install(hub).rotate_keys(ws, alg))


@oidc.command("revoke-key")
@click.option("--workspace", "slug", required=True, help="the workspace whose key is revoked")
@click.option("--kid", required=True, help="the key's id (kid), as in the JWKS or a token's header")
@click.option("--yes", is_flag=True, help="revoke without asking")
def oidc_revoke_key(slug, kid, yes):
    """Emergency revocation of a compromised signing key: it leaves the JWKS now (tokens it signed no longer
    verify) and never signs again on any node; a signing key is replaced by a new one at once. Audited."""
    from idp.wiring import build_hub
    from oidc import install

    hub = build_hub(_settings())
    ws = _workspace(hub, slug)
    if not yes:
        click.confirm(f"Revoke signing key {kid} of {slug}? Tokens it signed stop verifying now", abort=True)
    done = install(hub).revoke_key(ws, kid)
    if done is None:
        click.echo(f"idhub: {slug} publishes no signing key {kid!r}", err=True)
        sys.exit(2)
    click.echo(f"revoked {kid}" + (f"; signing with {done['replacement']}" if done["replacement"] else ""))


@main.group()
def admin():
    """The admin API."""


@admin.group("token")
def admin_token():
    """Admin API tokens (shown once; stored as a keyed hash)."""


def _admin_tokens(hub):
    from admin.tokens import TokenService
    from idp.crypto import derive_key

    return TokenService(hub.db, derive_key(hub.settings.secret_key, "admin-api-tokens"),
                        keys=lambda: hub.keyring.hmac_keys("admin-api-tokens"))


@admin_token.command("create")
@click.option("--workspace", "slug", default=None, help="the workspace the token may administer")
@click.option("--operator", is_flag=True, help="a hub operator token: every workspace")
@click.option("--expires", default="30d", show_default=True, help="lifetime: 90m, 12h, 30d, 2w (at most 400d)")
@click.option("--name", default=None, help="shown in the audit log (default: cli-<date>)")
def admin_token_create(slug, operator, expires, name):
    """Create an admin API token and print it once."""
    from admin.tokens import TokenError, parse_ttl
    from idp.wiring import build_hub

    if operator == bool(slug):
        raise click.UsageError("give --workspace SLUG, or --operator for a hub operator token")
    try:
        ttl = parse_ttl(expires)
    except TokenError as exc:
        raise click.BadParameter(exc.message, param_hint="--expires") from None
    hub = build_hub(_settings())
    ws_id = None if operator else _workspace(hub, slug).id
    name = name or f"cli-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        token, row = _admin_tokens(hub).create(name, workspace_id=ws_id, operator=operator, ttl=ttl)
    except TokenError as exc:
        raise click.BadParameter(exc.message, param_hint=f"--{exc.field}") from None
    hub.audit.record("admin.token.created", workspace_id=ws_id, actor_email="idhub admin token create",
                     subject_id=row.id, data={"name": name, "operator": operator,
                                              "expires_at": row.expires_at.isoformat()})
    click.echo(token)
    click.echo(f"token {row.id} ({'hub operator' if operator else slug}) expires {row.expires_at:%Y-%m-%d %H:%M} UTC;"
               " it is shown only this once", err=True)


@admin_token.command("list")
@click.option("--workspace", "slug", default=None)
def admin_token_list(slug):
    """List admin API tokens (never their values)."""
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    ws_id = _workspace(hub, slug).id if slug else None
    for t in _admin_tokens(hub).list(ws_id):
        state = "revoked" if t.revoked_at else ("expired" if t.expires_at <= datetime.now(UTC) else "active")
        click.echo(f"{t.id}  {t.name}  {'operator' if t.operator else t.workspace_id}  {state}  "
                   f"expires {t.expires_at:%Y-%m-%d}")


@admin_token.command("revoke")
@click.argument("token_id")
def admin_token_revoke(token_id):
    """Revoke an admin API token by its id."""
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    tokens = _admin_tokens(hub)
    row = next((t for t in tokens.list() if t.id == token_id), None)
    if row is None or not tokens.revoke(token_id):
        click.echo(f"idhub: no active token {token_id!r}", err=True)
        sys.exit(2)
    hub.audit.record("admin.token.revoked", workspace_id=row.workspace_id, actor_email="idhub admin token revoke",
                     subject_id=token_id, data={"name": row.name})
    click.echo(f"revoked {token_id}")


@main.group("secrets")
def secrets_group():
    """IDHUB_SECRET_KEY rotation (IDHUB_SECRET_KEY_PREVIOUS lists the earlier keys while it is under way)."""


@secrets_group.command("rotate")
@click.option("--check", "check_only", is_flag=True,
              help="only report what still needs a previous key (exit 1 if anything does); change nothing")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 100000),
              help="rows per transaction")
def secrets_rotate(check_only, batch):
    """Re-encrypt everything stored under a previous IDHUB_SECRET_KEY with the current one. Safe to run again
    (what is already under the current key is left alone) and while nodes serve; audited. Afterwards remove the
    previous key from IDHUB_SECRET_KEY_PREVIOUS."""
    from idp import rotation
    from idp.crypto import key_id, secret_keys
    from idp.wiring import build_hub

    hub = build_hub(_settings())
    keys = secret_keys(hub.settings)
    click.echo(f"current key {key_id(keys[0])}; previous: {', '.join(key_id(k) for k in keys[1:]) or 'none'}")
    report = rotation.check(hub) if check_only else rotation.rotate(hub, batch)
    for line in report.lines(done=not check_only):
        click.echo(line)
    if check_only:
        if report.pending:
            click.echo("idhub: data still needs a previous key: run `idhub secrets rotate`", err=True)
            sys.exit(1)
        click.echo("nothing needs a previous key: IDHUB_SECRET_KEY_PREVIOUS can be removed")
        return
    counts = {name: {"reencrypted": c.previous, "unreadable": c.unreadable} for name, c in report.sealed.items()}
    hub.audit.record("admin.secrets.rotated", actor_email="idhub secrets rotate",
                     data={"key_id": key_id(keys[0]), "previous_key_ids": [key_id(k) for k in keys[1:]],
                           "sealed": counts, "retained_keys_stored": report.retained_added,
                           "nameid_salts_stored": report.nameid_salts})
    unreadable = sum(c.unreadable for c in report.sealed.values())
    if unreadable:
        click.echo(f"idhub: {unreadable} value(s) opened by no listed key were left as they are", err=True)
        sys.exit(1)


def _attach_saml() -> None:
    """``idhub saml stage|status|refresh-metadata``: the SAML IdP's operator commands (saml/rollover.py)."""
    from saml.rollover import cli as saml_cli

    main.add_command(saml_cli, "saml")


_attach_saml()


if __name__ == "__main__":  # pragma: no cover
    main()
