"""The deployment kit cannot rot: the commands and environment of ``Dockerfile``, ``deploy/compose.yaml`` and
``deploy/idhub.service`` are read from those files and run here, against real PostgreSQL and Redis — the migration
job, two nodes as compose starts them, the image's health check, a node as the systemd unit starts it — and a
sign-in on one node is a session on the other.

Only what a container or a host provides is swapped: the service host names (``postgres``, ``redis``) become this
machine's test services, the listening port a free one, the binary's install path the venv's ``idhub``."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import yaml

from config.settings import load_settings
from tests.helpers.live import idhub_executable, random_secret
from tests.helpers.smtp import free_port
from tests.services import drop_postgres, postgres_url, start_private_redis

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FLOW = re.compile(r'name="flow" value="([^"]+)"')
EMAIL, PASSWORD = "ops@kit.test", "Kit-Example-Pass1!"
CONFIG = {"workspaces": [{"slug": "kit", "name": "Kit", "users": [{"email": EMAIL, "password": PASSWORD}]}]}


# ---- reading the kit -------------------------------------------------------------------------------------------
def dockerfile() -> dict:
    text = (REPO / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
             for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]
    runtime = instr[max(i for i, (k, _) in enumerate(instr) if k == "FROM"):]  # the last stage is the image
    cmd = [v for k, v in runtime if k == "CMD"][-1]
    health = [v for k, v in runtime if k == "HEALTHCHECK"][-1]
    return {"froms": [v for k, v in instr if k == "FROM"], "user": [v for k, v in runtime if k == "USER"],
            "expose": [v for k, v in runtime if k == "EXPOSE"], "cmd": yaml.safe_load(cmd),
            "health": yaml.safe_load(health[health.index("CMD") + 3:])}


def interpolate(value: str, env: dict) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (the forms compose.yaml uses)."""
    def one(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would refuse to start: {arg}")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def with_port(cmd: list[str], port: int) -> list[str]:
    out = list(cmd)
    out[out.index("--port") + 1] = str(port)
    return out


def unit() -> dict:
    values: dict[str, str] = {}
    for line in (DEPLOY / "idhub.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip()
    return values


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# ---- running it ------------------------------------------------------------------------------------------------
class Node:
    def __init__(self, cmd: list[str], env: dict, cwd: Path):
        self.port = int(cmd[cmd.index("--port") + 1])
        self.log = cwd / f"node-{self.port}.log"
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(self.url("/readyz"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError("the node did not become ready:\n" + self.log.read_text()[-3000:])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(20)


class Browser:
    """Keeps cookies itself: the kit sets ``IDHUB_COOKIE_SECURE=true`` (``Secure``, ``__Host-``) and the nodes are
    reached here over plain HTTP, as the proxy reaches them."""

    def __init__(self):
        self.cookies: dict[str, str] = {}

    def request(self, method: str, url: str, **kw) -> requests.Response:
        r = requests.request(method, url, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()),
                                                   "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0"},
                             allow_redirects=False, timeout=15, **kw)
        for c in r.cookies:
            self.cookies[c.name] = c.value
        return r

    def follow(self, node: Node, r: requests.Response, limit: int = 5) -> requests.Response:
        while r.is_redirect and limit:
            loc = urlsplit(urljoin(r.url, r.headers["Location"]))  # absolute URLs name IDHUB_BASE_URL: same path
            r = self.request("GET", node.url(loc.path + (f"?{loc.query}" if loc.query else "")))
            limit -= 1
        return r

    def sign_in(self, node: Node) -> requests.Response:
        page = self.follow(node, self.request("GET", node.url("/w/kit/login")))
        r = self.follow(node, self.request("POST", node.url("/w/kit/login"),
                                           data={"email": EMAIL, "csrf_token": CSRF.search(page.text)[1]}))
        return self.request("POST", node.url("/w/kit/login/password"), data={
            "flow": FLOW.search(r.text)[1], "password": PASSWORD, "csrf_token": CSRF.search(r.text)[1]})

    def signed_in(self, node: Node) -> bool:
        return self.request("GET", node.url("/w/kit/settings/security")).status_code == 200


@pytest.fixture
def services():
    db = postgres_url()
    with start_private_redis() as redis_server:
        yield db, redis_server.url
    drop_postgres(db)


def compose_env(doc: dict, service: str, db: str, redis: str, secrets: dict) -> dict:
    svc = doc["services"][service]
    env = {k: interpolate(str(v), secrets) for k, v in svc["environment"].items()}
    pg, rd = urlsplit(env["IDHUB_DATABASE_URL"]), urlsplit(env["IDHUB_REDIS_URL"])
    assert (pg.scheme, pg.hostname) == (urlsplit(db).scheme, "postgres") and "postgres" in doc["services"]
    assert (rd.scheme, rd.hostname) == ("redis", "redis") and "redis" in doc["services"]
    env["IDHUB_DATABASE_URL"], env["IDHUB_REDIS_URL"] = db, redis  # the services' names → this machine's services
    return env


def test_the_image_is_multi_stage_non_root_and_checks_readiness():
    d = dockerfile()
    assert len(d["froms"]) >= 2 and d["user"] and d["user"][-1] not in ("root", "0")
    assert d["cmd"][:2] == ["idhub", "serve"] and d["expose"] == [d["cmd"][d["cmd"].index("--port") + 1]]
    assert "/readyz" in d["health"][-1] and f":{d['expose'][0]}/" in d["health"][-1]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "instance"} <= set(ignored)


def test_compose_runs_the_migration_then_two_nodes_that_share_sessions(services, tmp_path):
    db, redis = services
    doc = compose()
    secrets = {"POSTGRES_PASSWORD": "unused-here", "IDHUB_SECRET_KEY": random_secret(48)}
    with pytest.raises(AssertionError, match="IDHUB_SECRET_KEY"):
        interpolate(str(doc["x-idhub"]["environment"]["IDHUB_SECRET_KEY"]), {})  # no default secret
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    idhub = idhub_executable()

    migrate = doc["services"]["migrate"]
    assert migrate["restart"] == "no" and migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = {**base, **compose_env(doc, "migrate", db, redis, secrets)}
    load_settings(env)  # every value the kit sets is valid
    cmd = migrate["command"]
    assert cmd[0] == "idhub"
    subprocess.run([idhub, *cmd[1:]], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    (tmp_path / "kit.yaml").write_text(yaml.safe_dump(CONFIG))
    subprocess.run([idhub, "apply", "kit.yaml"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)

    caddy = (DEPLOY / "Caddyfile").read_text()
    nodes = []
    try:
        for name in ("idhub1", "idhub2"):
            svc = doc["services"][name]
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
            assert re.search(rf"reverse_proxy[^\n]*\b{name}:{svc['command'][svc['command'].index('--port') + 1]}\b",
                             caddy), f"the proxy does not send to {name}"
            env = {**base, **compose_env(doc, name, db, redis, secrets)}
            nodes.append(Node([idhub, *with_port(svc["command"], free_port())[1:]], env, tmp_path))
        assert "health_uri /readyz" in caddy
        # the image's HEALTHCHECK command, as Docker runs it inside the container, against each node
        check = dockerfile()["health"]
        for n in nodes:
            argv = [a.replace(":8000/", f":{n.port}/") for a in check]
            assert subprocess.run(argv, timeout=10).returncode == 0
        b = Browser()
        r = b.sign_in(nodes[0])
        assert r.status_code == 302, r.text[:300]
        assert any(c.startswith("__Host-") for c in b.cookies), b.cookies  # IDHUB_COOKIE_SECURE=true
        assert b.signed_in(nodes[1]) and b.signed_in(nodes[0])  # one fleet: the session works on either node
        metrics = requests.get(nodes[1].url("/metrics"), timeout=5)
        assert metrics.status_code == 403  # 127.0.0.1 is not in the kit's IDHUB_METRICS_ALLOW (the compose network)
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0] * len(nodes)  # SIGTERM (docker stop) ends them cleanly


def test_the_systemd_unit_starts_a_node_with_its_env_file(services, tmp_path):
    db, redis = services
    u = unit()
    assert u["User"] == "idhub" and u["EnvironmentFile"] == "/etc/idhub/idhub.env"
    example = env_file(DEPLOY / "idhub.env.example")
    load_settings(example)  # the example file is a valid configuration as written
    argv = shlex.split(u["ExecStart"])
    assert argv[0] == "/opt/idhub/venv/bin/idhub" and argv[1] == "serve"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
    env.update(example)
    env.update({"IDHUB_DATABASE_URL": db, "IDHUB_REDIS_URL": redis, "IDHUB_SECRET_KEY": random_secret(48),
                "IDHUB_OUTBOX_DIR": str(tmp_path / "outbox")})
    idhub = idhub_executable()
    subprocess.run([idhub, "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    node = Node([idhub, *with_port(argv, free_port())[1:]], env, tmp_path)
    try:
        with urllib.request.urlopen(node.url("/readyz"), timeout=5) as resp:  # noqa: S310 (loopback)
            assert resp.status == 200
    finally:
        assert node.stop() == 0
