"""A real idhub process for end-to-end tests.

    with LiveHub(config, smtp_url=sink.url) as hub:
        requests.get(hub.url("/healthz"))

``LiveHub`` makes a temporary instance directory, writes ``config.yaml`` from a dict (the contract's config
schema), runs ``idhub db upgrade`` and ``idhub apply``, then ``idhub serve`` on a free port and waits for
``GET /healthz`` to answer 200. Everything it runs is the installed ``idhub`` console script, so the tests see
the hub exactly as an operator does. The server's output goes to ``server.log`` in the instance directory;
``log_tail()`` returns it for failure reports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from .smtp import free_port

REPO = Path(__file__).resolve().parents[2]


def idhub_executable() -> str:
    """The ``idhub`` console script: $IDHUB_BIN, next to this interpreter, the repo's .venv, or on PATH."""
    candidates = [
        os.environ.get("IDHUB_BIN"),
        str(Path(sys.executable).parent / "idhub"),
        str(REPO / ".venv" / "bin" / "idhub"),
        shutil.which("idhub"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError("the idhub console script was not found (install idhub into the virtualenv)")


def random_secret(n: int = 48) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(n))


class HubError(RuntimeError):
    """The hub could not be prepared or started; the message carries its output."""


class LiveHub:
    def __init__(
        self,
        config: dict | None = None,
        *,
        smtp_url: str | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        workers: int = 2,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 30,
    ) -> None:
        self.config = config
        self.smtp_url = smtp_url
        self.workers = workers
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="idhub-live-"))
        self.outbox_dir = self.dir / "outbox"
        self.log_path = self.dir / "server.log"
        self.database_url = database_url or f"sqlite:///{self.dir / 'idhub.db'}"
        self.redis_url = redis_url
        self.secret_key = random_secret(48)
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.setup_output = ""

    # environment ---------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDHUB_")}
        env.update(
            {
                "IDHUB_DATABASE_URL": self.database_url,
                "IDHUB_BASE_URL": self.base_url,
                "IDHUB_SECRET_KEY": self.secret_key,
                "IDHUB_COOKIE_SECURE": "false",
                "IDHUB_OUTBOX_DIR": str(self.outbox_dir),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.smtp_url:
            env["IDHUB_SMTP_URL"] = self.smtp_url
        if self.redis_url:
            env["IDHUB_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env

    def url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # commands ------------------------------------------------------------------------------------------
    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``idhub ARGS`` in the instance directory with the hub's environment."""
        cmd = [idhub_executable(), *args]
        res = subprocess.run(
            cmd, cwd=self.dir, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        self.setup_output += f"$ idhub {' '.join(args)}  (exit {res.returncode})\n{res.stdout}{res.stderr}\n"
        if check and res.returncode != 0:
            raise HubError(
                f"`idhub {' '.join(args)}` exited {res.returncode}\n--- stdout ---\n{res.stdout}"
                f"\n--- stderr ---\n{res.stderr}"
            )
        return res

    def write_config(self, config: dict, name: str = "config.yaml") -> Path:
        path = self.dir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        return path

    def apply(self, config: dict, name: str = "config.yaml") -> subprocess.CompletedProcess:
        return self.run("apply", str(self.write_config(config, name)))

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> LiveHub:
        try:
            self.run("db", "upgrade")
            if self.config is not None:
                self.apply(self.config)
            self._serve()
        except BaseException:
            self.stop()
            raise
        return self

    def _serve(self) -> None:
        self._log_file = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 (closed in stop())
        cmd = [
            idhub_executable(), "serve",
            "--host", self.host, "--port", str(self.port), "--workers", str(self.workers),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.dir,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: workers are stopped with it
        )
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubError(
                    f"`idhub serve` exited with {self.proc.returncode} before it was healthy\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise HubError(
            f"GET /healthz did not answer 200 within {self.startup_timeout}s (last: {last})\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self.stop()
        if os.environ.get("IDHUB_TEST_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LiveHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # diagnostics ---------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        text = self.log_text().splitlines()
        out = "\n".join(text[-lines:])
        return f"--- setup ---\n{self.setup_output}--- server.log (last {lines} lines) ---\n{out}"


@contextmanager
def fresh_postgres_database(server_url: str):
    """A throwaway database on the PostgreSQL server of ``server_url``; yields its SQLAlchemy URL.

    Each hub gets an empty database, so tests never see each other's users or sessions.
    """
    import psycopg

    parts = urlsplit(server_url)
    name = "idhub_test_" + secrets.token_hex(6)
    admin_dsn = urlunsplit(("postgresql", parts.netloc, parts.path or "/postgres", parts.query, ""))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
