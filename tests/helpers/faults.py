"""Real faults for fleet tests: a TCP proxy the test can cut or freeze for one node only, and a PostgreSQL cluster
of the test's own that it can stop and start.

    with TcpProxy(upstream_port) as proxy:   # node A talks to Redis through proxy.port
        proxy.cut()      # connections reset, new ones refused (Redis gone, for this node only)
        proxy.freeze()   # connections accepted, nothing forwarded (a hung Redis or a black-holed network)
        proxy.heal()

    with PrivatePostgres() as pg:            # initdb + pg_ctl, as the postgres user when run as root
        url = pg.create_database()
        pg.stop(); pg.start()
"""

from __future__ import annotations

import glob
import os
import pwd
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import psycopg

from tests.services import ServiceMissing, free_port

FORWARD, CUT, FROZEN = "forward", "cut", "frozen"


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.mode = FORWARD
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping = True
        self._thread.join(5)
        self._listener.close()
        self._drop_all()

    # -- faults ----------------------------------------------------------------------------------------------
    def cut(self) -> None:
        """Every connection reset, new ones closed at once: the node sees connection errors immediately."""
        with self._lock:
            self.mode = CUT
        self._drop_all()

    def freeze(self) -> None:
        """Connections stay open but nothing is forwarded: the node's calls time out."""
        with self._lock:
            self.mode = FROZEN

    def heal(self) -> None:
        with self._lock:
            self.mode = FORWARD
        self._drop_all()  # connections that lived through a freeze may hold half a reply: start clean

    # -- plumbing --------------------------------------------------------------------------------------------
    def _drop_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.mode == CUT:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stopping:
                try:
                    ready, _, _ = select.select([a, b], [], [], 0.1)
                except (OSError, ValueError):
                    return
                if self.mode == FROZEN:
                    continue  # hold everything: the node waits for an answer that does not come
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise ServiceMissing(f"{name} not found (install the PostgreSQL server package)")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own on a free port (trust auth, fsync off), run as ``postgres`` when
    the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="idhub-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        res = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise ServiceMissing(f"{' '.join(cmd[:2])} failed: {res.stdout}{res.stderr}")

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} " \
               "-c fsync=off -c synchronous_commit=on -c full_page_writes=off"
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w",
                  "-t", "30", "start")

    def stop(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={self.user}"

    def create_database(self) -> str:
        name = f"idhub_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def wait_down(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.05)

    def __enter__(self) -> PrivatePostgres:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except (ServiceMissing, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
