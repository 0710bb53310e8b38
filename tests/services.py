"""Real services for tests: throwaway PostgreSQL databases, Redis key prefixes, private Redis servers.

A missing service is an error, never a skip: CI must go red when PostgreSQL or Redis is not there.
Override the defaults with IDHUB_TEST_PG (a libpq conninfo for the admin database) and
IDHUB_TEST_REDIS (a redis:// URL).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import psycopg
import redis

PG_ADMIN = os.environ.get("IDHUB_TEST_PG", "host=127.0.0.1 port=5432 dbname=test user=postgres")
REDIS_URL = os.environ.get("IDHUB_TEST_REDIS", "redis://127.0.0.1:6379/15")


class ServiceMissing(RuntimeError):
    """A service the tests need is not running. Start it; the tests do not skip."""


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise ServiceMissing(f"PostgreSQL is unreachable ({PG_ADMIN!r}): {exc}") from exc


def postgres_url() -> str:
    """Create a fresh database ``idhub_test_<random>``; returns its ``postgresql+psycopg://`` URL."""
    name = f"idhub_test_{uuid.uuid4().hex[:12]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        info = conn.info
        user, host, port = info.user, info.host, info.port
    return f"postgresql+psycopg://{user}@{host}:{port}/{name}"


def drop_postgres(url: str) -> None:
    """Drop a database made by ``postgres_url`` (dispose its engines first); only ``idhub_test_*``."""
    name = urlsplit(url).path.lstrip("/")
    if not name.startswith("idhub_test_"):
        raise ValueError(f"refusing to drop {name!r}")
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_url() -> tuple[str, str]:
    """(URL of the shared test Redis on a db index, a unique key prefix); checks Redis answers."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        raise ServiceMissing(f"Redis is unreachable ({REDIS_URL}): {exc}") from exc
    finally:
        client.close()
    return REDIS_URL, f"idhub-test:{uuid.uuid4().hex[:12]}:"


def clean_redis(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


def free_port() -> int:
    """A TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A ``redis-server`` of our own on a free port, without persistence, that tests may stop and start."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="idhub-redis-")

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceMissing("redis-server is not on PATH")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise ServiceMissing(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)  # a frozen server must be able to hear SIGTERM
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung Redis, not a dead one)."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def start_private_redis() -> Iterator[PrivateRedis]:
    """Start a private Redis; stop it (and remove its directory) on exit."""
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()
