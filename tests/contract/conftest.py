"""Backends for the contract suite: every store test runs against each of them.

A backend that needs PostgreSQL or Redis errors out when the service is missing (never skips).
"""

from __future__ import annotations

import secrets
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so that ``tests.services`` imports however pytest was started
    sys.path.insert(0, str(ROOT))

from idp.db import Base, make_engine, make_sessionmaker  # noqa: E402
from idp.models import User, Workspace  # noqa: E402
from idp.storage import factory  # noqa: E402
from idp.storage.memory import (  # noqa: E402
    MemoryFlowStore,
    MemoryOneTimeStore,
    MemorySessionStore,
    MemoryThrottleStore,
)
from idp.storage.redis_store import (  # noqa: E402
    CachedSessionStore,
    RedisFlowStore,
    RedisOneTimeStore,
    RedisThrottleStore,
)
from idp.storage.sql import SqlFlowStore, SqlOneTimeStore, SqlSessionStore, SqlThrottleStore  # noqa: E402
from tests.services import clean_redis, drop_postgres, postgres_url, redis_url  # noqa: E402

KV_BACKENDS = ["memory", "sqlite", "postgres", "redis"]
SESSION_BACKENDS = ["memory", "sqlite", "postgres", "cached-sqlite", "cached-postgres"]


@pytest.fixture(scope="session")
def sqlite_sm(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "contract.db"
    engine = make_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def pg_url():
    url = postgres_url()
    yield url
    drop_postgres(url)


@pytest.fixture(scope="session")
def pg_sm(pg_url):
    engine = make_engine(pg_url)
    Base.metadata.create_all(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def redis_target():
    url, prefix = redis_url()
    yield url, prefix
    clean_redis(url, prefix)


@pytest.fixture(scope="session")
def redis_conn(redis_target):
    client = factory.redis_client(redis_target[0])
    yield client
    client.close()


def _sm(request, backend: str):
    return request.getfixturevalue("pg_sm" if backend.endswith("postgres") else "sqlite_sm")


def _kv(request, memory_cls, sql_cls, redis_cls):
    backend = request.param
    if backend == "memory":
        return memory_cls()
    if backend == "redis":
        _url, prefix = request.getfixturevalue("redis_target")
        return redis_cls(request.getfixturevalue("redis_conn"), prefix)
    return sql_cls(_sm(request, backend))


@pytest.fixture(params=KV_BACKENDS)
def one_time(request):
    return _kv(request, MemoryOneTimeStore, SqlOneTimeStore, RedisOneTimeStore)


@pytest.fixture(params=KV_BACKENDS)
def throttle(request):
    return _kv(request, MemoryThrottleStore, SqlThrottleStore, RedisThrottleStore)


@pytest.fixture(params=KV_BACKENDS)
def flows(request):
    return _kv(request, MemoryFlowStore, SqlFlowStore, RedisFlowStore)


@dataclass
class SessionBackend:
    name: str
    store: object
    sql: SqlSessionStore | None  # the database under the store, to check what was written
    sm: object | None

    def new_user(self) -> tuple[str, str]:
        """A fresh (workspace_id, user_id); real rows when the backend has foreign keys."""
        ws_id, user_id = str(uuid.uuid4()), str(uuid.uuid4())
        if self.sm is not None:
            with self.sm() as s, s.begin():
                s.add(Workspace(id=ws_id, slug="ws-" + ws_id[:8], name="Contract"))
                s.flush()
                email = f"{user_id}@example.test"
                s.add(User(id=user_id, workspace_id=ws_id, email=email, email_normalized=email))
        return ws_id, user_id


def make_session_backend(request, name: str) -> SessionBackend:
    if name == "memory":
        return SessionBackend(name, MemorySessionStore(), None, None)
    sm = _sm(request, name)
    sql = SqlSessionStore(sm)
    if name.startswith("cached-"):
        _url, prefix = request.getfixturevalue("redis_target")
        store = CachedSessionStore(sql, request.getfixturevalue("redis_conn"), prefix)
        return SessionBackend(name, store, sql, sm)
    return SessionBackend(name, sql, sql, sm)


@pytest.fixture(params=SESSION_BACKENDS)
def sessions(request) -> SessionBackend:
    return make_session_backend(request, request.param)


@pytest.fixture
def key() -> str:
    """A key no other test uses."""
    return "k:" + secrets.token_hex(8)
