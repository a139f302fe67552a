"""The conformance adapter of the Python client: the tiny HTTP service the conformance
harness drives (the adapter protocol of conformance/README.md in the Imprint repository).

    python conformance_adapter.py [--port N]

Listens on 127.0.0.1 (a free port by default) and prints ``listening on http://<addr>`` as
its first line; logs go to stderr. Standard library only, on the client in ``imprint/``
next to this file (no install needed; ``snapshot_keyring``, the capability
``sealed_snapshots``, needs the ``cryptography`` package, as the client does).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import unquote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imprint import Client, Subscription  # noqa: E402

NAME = "python"
CAPABILITIES = ["json", "bytes", "file", "cache", "corrupt_cache", "snapshot", "startup_fallback", "token",
                "shutdown", "listener", "subscribe", "regions", "sealed_snapshots"]
CLIENT_FIELDS = {"url", "token", "instance", "labels", "cache_dir", "snapshot_store", "snapshot_keyring", "topics",
                 "settings"}
TOPIC_FIELDS = {"name", "decoder", "default"}
SETTINGS = {"long_poll_ms", "initial_wait_ms", "request_timeout_ms", "backoff_min_ms", "backoff_max_ms",
            "startup_fallback", "recheck_rejected_ms"}
MAX_BODY = 1 << 20

log = logging.getLogger("imprint.conformance")


class Refused(Exception):
    """An answer other than success: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Watched:
    """A subscription and what its change listener has heard."""

    def __init__(self, sub: Subscription[Any], read: Callable[[Any], Any]):
        self.sub = sub
        self.read = read
        self.lock = threading.Lock()
        self.changes = 0
        self.last: Any = None
        sub.on_change(self._heard)

    def _heard(self, value: Any) -> None:
        with self.lock:
            self.changes += 1
            self.last = self.read(value)

    def observed(self) -> Dict[str, Any]:
        h = self.sub.current()
        with self.lock:
            changes, last = self.changes, self.last
        return {"value": self.read(h.value), "version": h.version, "source": h.source.value,
                "pinned": bool(h.pinned), "changes": changes, "last_change": last,
                "served_region": h.region}


class Entry:
    def __init__(self, client: Client):
        self.client = client
        self.lock = threading.Lock()
        self.subs: Dict[str, Watched] = {}

    def subscribe(self, t: Any) -> None:
        """One subscription, its decoder as ``t`` says, with its listener registered."""
        if not isinstance(t, dict):
            raise Refused(400, "a topic is a JSON object")
        unknown = set(t) - TOPIC_FIELDS
        if unknown:
            raise Refused(400, f"unknown topic fields: {sorted(unknown)}")
        if "name" not in t or "decoder" not in t:
            raise Refused(400, "a topic needs name and decoder")
        name, decoder = t["name"], t["decoder"]
        with self.lock:
            if name in self.subs:
                raise Refused(400, f"{name} is subscribed already")
        try:
            if decoder == "json":
                sub: Subscription[Any] = self.client.subscribe_json(name, t.get("default"))
            elif decoder == "bytes":
                sub = self.client.subscribe(name, "", lambda b: b.decode("utf-8", "replace"))
            elif decoder == "file":
                sub = self.client.subscribe_file(name, None, describe_file)
            else:
                raise Refused(400, f"unknown decoder {decoder!r}")
        except Refused:
            raise
        except Exception as e:  # a subscribe that raised
            raise Refused(400, f"subscribe failed: {e!r}")
        w = Watched(sub, lambda v: v)
        with self.lock:
            self.subs[name] = w


class Adapter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clients: Dict[str, Entry] = {}
        self.ids = itertools.count(1)

    def entry(self, cid: str) -> Entry:
        with self.lock:
            e = self.clients.get(cid)
        if e is None:
            raise Refused(404, f"no client {cid}")
        return e

    # ------------------------------------------------------------ endpoints ----
    def create(self, spec: Any) -> Dict[str, Any]:
        if not isinstance(spec, dict):
            raise Refused(400, "the body is not a JSON object")
        unknown = set(spec) - CLIENT_FIELDS
        if unknown:
            raise Refused(400, f"unknown fields: {sorted(unknown)}")
        for f in ("url", "instance", "topics"):
            if f not in spec:
                raise Refused(400, f"missing field {f}")
        s = spec.get("settings") or {}
        unknown = set(s) - SETTINGS
        if unknown:
            raise Refused(400, f"unknown settings: {sorted(unknown)}")
        kw: Dict[str, Any] = {}
        sec = lambda k: s[k] / 1000.0  # noqa: E731
        if s.get("long_poll_ms") is not None:
            kw["long_poll"] = sec("long_poll_ms")
        if s.get("initial_wait_ms") is not None:
            kw["initial_wait"] = sec("initial_wait_ms")
        if s.get("request_timeout_ms") is not None:
            kw["request_timeout"] = sec("request_timeout_ms")
        if s.get("backoff_min_ms") is not None and s.get("backoff_max_ms") is not None:
            kw["backoff"] = (sec("backoff_min_ms"), sec("backoff_max_ms"))
        if s.get("startup_fallback") is not None:
            kw["startup_fallback"] = int(s["startup_fallback"])
        if s.get("recheck_rejected_ms") is not None:
            kw["recheck_rejected"] = sec("recheck_rejected_ms")
        try:
            client = Client(spec["url"], token=spec.get("token"), instance=spec["instance"],
                            labels=spec.get("labels") or {}, cache_dir=spec.get("cache_dir"),
                            snapshot_store=spec.get("snapshot_store"),
                            snapshot_keyring=spec.get("snapshot_keyring"), **kw)
        except (ValueError, TypeError) as e:
            raise Refused(400, f"the client does not build: {e}")
        entry = Entry(client)
        try:
            for t in spec["topics"]:
                entry.subscribe(t)
        except Refused:
            client.close()
            raise
        cid = f"c{next(self.ids)}"
        with self.lock:
            self.clients[cid] = entry
        return {"id": cid}

    def subscribe(self, cid: str, t: Any) -> None:
        self.entry(cid).subscribe(t)

    def observe(self, cid: str, topic: str) -> Dict[str, Any]:
        e = self.entry(cid)
        with e.lock:
            w = e.subs.get(topic)
        if w is None:
            raise Refused(404, f"client {cid} has no topic {topic}")
        return w.observed()

    def shutdown(self, cid: str) -> None:
        self.entry(cid).client.close()

    def remove(self, cid: str) -> None:
        with self.lock:
            e = self.clients.pop(cid, None)
        if e is None:
            raise Refused(404, f"no client {cid}")
        e.client.close()

    def corrupt(self, req: Any) -> None:
        if not isinstance(req, dict) or set(req) != {"cache_dir", "topic"}:
            raise Refused(400, "the body is {\"cache_dir\", \"topic\"}")
        d = Path(req["cache_dir"]) / req["topic"]
        spoiled = 0
        if d.is_dir():
            for f in d.iterdir():
                if f.suffix == ".bin" and f.is_file():
                    f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))
                    spoiled += 1
        if spoiled == 0:
            raise Refused(404, f"no cached payload in {d}")


def describe_file(path: Path) -> Dict[str, Any]:
    """The file decoder's value: what is on disk, read back."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def handler(adapter: Adapter) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _body(self) -> Any:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                raise Refused(400, "the body is too large")
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw or b"null")
            except ValueError as e:
                raise Refused(400, f"the body is not JSON: {e}")

        def _answer(self, status: int, body: Optional[Any]) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> Tuple[int, Optional[Any]]:
            parts = [unquote(p) for p in self.path.split("?", 1)[0].strip("/").split("/") if p]
            if method == "GET" and parts == []:
                return 200, {"name": NAME, "capabilities": CAPABILITIES}
            if method == "POST" and parts == ["clients"]:
                return 200, adapter.create(self._body())
            if method == "POST" and len(parts) == 3 and parts[0] == "clients" and parts[2] == "topics":
                adapter.subscribe(parts[1], self._body())
                return 204, None
            if method == "GET" and len(parts) == 4 and parts[0] == "clients" and parts[2] == "topics":
                return 200, adapter.observe(parts[1], parts[3])
            if method == "POST" and len(parts) == 3 and parts[0] == "clients" and parts[2] == "shutdown":
                adapter.shutdown(parts[1])
                return 204, None
            if method == "DELETE" and len(parts) == 2 and parts[0] == "clients":
                adapter.remove(parts[1])
                return 204, None
            if method == "POST" and parts == ["cache", "corrupt"]:
                adapter.corrupt(self._body())
                return 204, None
            raise Refused(404, f"no route {method} {self.path}")

        def _serve(self, method: str) -> None:
            try:
                status, body = self._route(method)
            except Refused as e:
                status, body = e.status, {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - the harness shows it
                log.exception("the adapter failed")
                status, body = 500, {"error": repr(e)}
            self._answer(status, body)

        def do_GET(self) -> None:  # noqa: N802
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="adapter-python %(levelname)s %(message)s")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(Adapter()))
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    # The harness holds our stdin (a pipe) open while it needs us: its end means the harness
    # is gone (even killed), so stop. Not for a terminal or /dev/null.
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
