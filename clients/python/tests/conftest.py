"""Test fixtures: a real Imprint server (the binary, on a fresh database of the running
Postgres, with its own home and object store) and a scriptable fake server for the unit
tests.

Real-server settings (./dev test sets them):
  IMPRINT_SERVER_BIN   the server binary (default: <repo>/target/debug/imprint-server)
  IMPRINT_TEST_PG_URL  an admin connection URL of Postgres (default: DATABASE_URL, else
                       postgres://postgres@127.0.0.1:54329/postgres)
  IMPRINT_TEST_PSQL    psql to create and drop the session's database (default: psql)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
REPO = HERE.parents[2]
ADMIN_TOKEN = "py-client-admin-token-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    """A URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Polls ``check`` until it returns something truthy (a test's patience, not a bound on the code)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


# ----------------------------------------------------------- the real server ----
def _pg_url_with_db(url: str, db: str) -> str:
    p = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + db, p.query, p.fragment))


class Server:
    """A running imprint-server and the admin calls the tests make through its HTTP API."""

    def __init__(self, url: str, home: Path, proc: "subprocess.Popen[bytes]", log: Path):
        self.url, self.home, self.proc, self.log = url, home, proc, log
        self.objects = home / "objects"

    def api(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
            content_type: str = "application/json") -> Tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return r.status, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, text

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, answer = self.api(method, path, body, **kw)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def topic(self, prefix: str = "t") -> str:
        name = f"{prefix}.{secrets.token_hex(4)}"
        self.ok("POST", "/api/v1/topics", {"name": name})
        return name

    def publish(self, topic: str, data: Any, scopes: Optional[List[Dict[str, str]]] = None) -> int:
        body: Dict[str, Any] = {"data": data if isinstance(data, str) else json.dumps(data)}
        if scopes is not None:
            body["scopes"] = scopes
        return int(self.ok("POST", f"/api/v1/topics/{topic}/versions", body)["version"])

    def publish_raw(self, topic: str, data: bytes) -> int:
        return int(self.ok("POST", f"/api/v1/topics/{topic}/versions", raw=data,
                           content_type="application/octet-stream")["version"])

    def pin(self, topic: str, version: int, selector: Optional[Dict[str, str]] = None) -> None:
        self.ok("PUT", f"/api/v1/topics/{topic}/pins", {"selector": selector or {}, "version": version})

    def unpin(self, topic: str) -> None:
        self.ok("DELETE", f"/api/v1/topics/{topic}/pins?selector=")

    def consumers(self, topic: str) -> List[Dict[str, Any]]:
        return list(self.ok("GET", f"/api/v1/topics/{topic}/consumers")["consumers"])


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    with running_server() as srv:
        yield srv


@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    """The server binary on a fresh database (dropped afterwards); also used by bench/."""
    binary = Path(os.environ.get("IMPRINT_SERVER_BIN") or REPO / "target/debug/imprint-server")
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: build it with `cargo build -p imprint-server` (or set IMPRINT_SERVER_BIN)")
    admin = os.environ.get("IMPRINT_TEST_PG_URL") or os.environ.get("DATABASE_URL") or \
        "postgres://postgres@127.0.0.1:54329/postgres"
    psql = os.environ.get("IMPRINT_TEST_PSQL", "psql")
    db = f"imprint_pyclient_{secrets.token_hex(4)}"
    admin_db = _pg_url_with_db(admin, "postgres")
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", admin_db, "-c", f"CREATE DATABASE {db}"], check=True)
    home = Path(tempfile.mkdtemp(prefix="imprint-pyclient-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPRINT_", "LEPTOS_"))}
    env.update(
        DATABASE_URL=_pg_url_with_db(admin, db),
        IMPRINT_ADDR=f"127.0.0.1:{port}",
        LEPTOS_SITE_ADDR=f"127.0.0.1:{port}",
        IMPRINT_HOME=str(home),
        IMPRINT_BOOTSTRAP_TOKEN=ADMIN_TOKEN,
        IMPRINT_ADMIN_PASSWORD="py-client-" + secrets.token_hex(8),
        IMPRINT_SNAPSHOT_SECS="1",
        IMPRINT_ROLLOUT_TICK_MS="200",
    )
    log = home / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "serve"], cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    srv = Server(url, home, proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not start; its log:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run([psql, "-X", "-q", admin_db, "-c", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], check=False)


# -------------------------------------------------------------- a fake server ----
class Fake:
    """A scripted stand-in for the server: ``on_poll(body) -> (status, answer, headers)``,
    payloads served from ``files``; every request recorded."""

    def __init__(self) -> None:
        self.polls: List[Dict[str, Any]] = []
        self.requests: List[Tuple[str, str, Dict[str, str]]] = []
        self.files: Dict[str, bytes] = {}
        self.statuses: Dict[str, int] = {}  # a path answered with this error status
        self.on_poll: Callable[[Dict[str, Any]], Tuple[int, Any, Dict[str, str]]] = \
            lambda body: (200, {"updates": {}, "missing": {}, "poll_after_ms": 0}, {})
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: Dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                with fake.lock:
                    fake.requests.append(("POST", self.path, dict(self.headers)))
                    fake.polls.append(body)
                status, answer, headers = fake.on_poll(body)
                self._send(status, json.dumps(answer).encode(), {"Content-Type": "application/json", **headers})

            def do_GET(self) -> None:
                with fake.lock:
                    fake.requests.append(("GET", self.path, dict(self.headers)))
                data = fake.files.get(self.path)
                if self.path in fake.statuses:
                    self._send(fake.statuses[self.path], b'{"error":{"code":"object_store_unavailable","message":"down"}}', {})
                    return
                if data is None:
                    self._send(404, b'{"error":{"code":"not_found","message":"no"}}', {})
                    return
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].rstrip("-"))
                    self._send(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                else:
                    self._send(200, data, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[Fake]:
    f = Fake()
    yield f
    f.close()
