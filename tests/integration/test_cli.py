"""The ``idhub`` command as operators run it (a real subprocess)."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import BASE_CONFIG

IDHUB = str(Path(sys.executable).parent / "idhub")


def run(args, tmp_path, **kw):
    env = {**os.environ, "IDHUB_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
           "IDHUB_SECRET_KEY": "k" * 48, "IDHUB_OUTBOX_DIR": str(tmp_path / "outbox"), "IDHUB_LOG_LEVEL": "WARNING"}
    env.update(kw.pop("env", {}))
    return subprocess.run([IDHUB, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, **kw)


def write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return str(p)


def test_upgrade_apply_export_verify(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    good = write(tmp_path, "good.yaml", BASE_CONFIG)
    r = run(["apply", good], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "applied 2 workspace(s)" in r.stdout
    r = run(["apply", good], tmp_path)  # idempotent
    assert r.returncode == 0 and "created" not in r.stdout
    r = run(["audit", "export", "--workspace", "acme", "--format", "json"], tmp_path)
    assert r.returncode == 0, r.stderr
    events = json.loads(r.stdout)
    assert [e["type"] for e in events] == ["admin.config.applied", "admin.config.applied"]
    r = run(["audit", "export", "--workspace", "acme", "--format", "csv", "--since", "2000-01-01T00:00:00Z"],
            tmp_path)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 2 and rows[0]["type"] == "admin.config.applied"
    r = run(["audit", "verify"], tmp_path)
    assert r.returncode == 0 and "intact" in r.stdout


def test_invalid_file_names_each_error_and_applies_nothing(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    bad = {"workspaces": [
        {"slug": "ok", "name": "Fine"},
        {"slug": "acme", "name": "Acme", "apps": [
            {"slug": "a", "name": "A", "protocol": "oidc", "client_id": "a", "redirect_uris": ["http://x/cb"]},
            {"slug": "b", "name": "B", "protocol": "oidc", "client_id": "b", "redirect_uris": ["not-a-url"]}]},
    ]}
    r = run(["apply", write(tmp_path, "bad.yaml", bad)], tmp_path)
    assert r.returncode == 2
    assert "workspaces[1].apps[1].redirect_uris[0]: not an absolute URL" in r.stderr
    assert "nothing was applied" in r.stderr
    r = run(["audit", "export", "--workspace", "ok"], tmp_path)
    assert r.returncode == 2 and "no workspace 'ok'" in r.stderr


def test_unparsable_yaml_and_missing_file(tmp_path):
    run(["db", "upgrade"], tmp_path)
    r = run(["apply", write(tmp_path, "broken.yaml", "workspaces: [ {slug: a\n")], tmp_path)
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr
    r = run(["apply", str(tmp_path / "missing.yaml")], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    huge = "workspaces:\n" + "  - {slug: a, name: " + "x" * (6 * 1024 * 1024) + "}\n"
    r = run(["apply", write(tmp_path, "huge.yaml", huge)], tmp_path)
    assert r.returncode == 2 and "larger than" in r.stderr


def test_bad_environment_fails_fast(tmp_path):
    r = run(["db", "upgrade"], tmp_path, env={"IDHUB_SECRET_KEY": "short"})
    assert r.returncode == 2 and "IDHUB_SECRET_KEY" in r.stderr and "Traceback" not in r.stderr
    r = run(["db", "upgrade"], tmp_path, env={"IDHUB_TRUSTED_PROXIES": "10.0.0.1/8"})
    assert r.returncode == 2 and "IDHUB_TRUSTED_PROXIES" in r.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    env = {"IDHUB_SECRET_KEY": "", "IDHUB_SECRET_KEY_FILE": str(secret_file)}
    assert run(["db", "upgrade"], tmp_path, env=env).returncode == 0


def test_audit_commands_reject_bad_arguments(tmp_path):
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    run(["apply", write(tmp_path, "good.yaml", BASE_CONFIG)], tmp_path)
    for args in (["audit", "export", "--workspace", "acme", "--since", "yesterday"],
                 ["audit", "export", "--workspace", "acme", "--format", "xml"],
                 ["audit", "export", "--workspace", "x" * 100_000],
                 ["audit", "export", "--workspace", ""],
                 ["audit", "verify", "--workspace", "../../etc"]):
        r = run(args, tmp_path)
        assert r.returncode == 2, (args[:4], r.returncode, r.stderr[-300:])
        assert "Traceback" not in r.stderr


def test_tampering_is_detected_by_verify(tmp_path):
    import sqlite3

    assert run(["db", "upgrade"], tmp_path).returncode == 0
    run(["apply", write(tmp_path, "good.yaml", BASE_CONFIG)], tmp_path)
    con = sqlite3.connect(tmp_path / "cli.db")
    con.execute("UPDATE audit_events SET actor_email = 'someone-else' WHERE seq = 1")
    con.commit()
    con.close()
    r = run(["audit", "verify"], tmp_path)
    assert r.returncode == 1 and "TAMPERED" in r.stderr


def test_version_has_one_source(tmp_path):
    """`idhub --version` prints idp.__version__, which is also the version the package was built with and the
    newest numbered release in the README's changelog."""
    import importlib.metadata
    import re

    import idp

    out = run(["--version"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"idhub {idp.__version__}"
    assert importlib.metadata.version("idhub") == idp.__version__
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    changelog = readme.split("## Changelog", 1)[1]
    assert re.findall(r"^- (\d+\.\d+\.\d+) ", changelog, re.M)[0] == idp.__version__


def test_license_file_is_the_apache_license():
    root = Path(__file__).resolve().parents[2]
    assert "Apache License" in (root / "LICENSE").read_text()[:200]
    assert "Version 2.0" in (root / "LICENSE").read_text()[:300]
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text()


def test_nodes_that_all_migrate_as_they_start_do_it_one_after_the_other(tmp_path):
    """Four `idhub db upgrade` at once on one fresh PostgreSQL database (an init container per pod): the first
    migrates, the others wait for its advisory lock and find the schema at head. Without the lock they race on
    the same CREATE TABLEs and some fail."""
    from sqlalchemy import create_engine, text

    from tests.services import drop_postgres, postgres_url

    url = postgres_url()
    try:
        env = {**os.environ, "IDHUB_DATABASE_URL": url, "IDHUB_SECRET_KEY": "k" * 48, "IDHUB_LOG_LEVEL": "WARNING"}
        procs = [subprocess.Popen([IDHUB, "db", "upgrade"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outs]
        engine = create_engine(url)
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        engine.dispose()
        assert len(versions) == 1
    finally:
        drop_postgres(url)
