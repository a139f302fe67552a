"""The HTTP transport: one bounded request at a time over http.client, with the bearer
token, JSON in and out, streamed bodies, and a way for another thread to abort the
request in flight (a new subscription abandons the open long poll; close() stops it)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from .errors import ApiError, NetworkError

USER_AGENT = "imprint-client-python/0.1"
CHUNK = 64 * 1024


class Transport:
    def __init__(self, base_url: str, token: Optional[str]):
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"server URL {base_url!r}: use http://host[:port] or https://...")
        self.scheme = parsed.scheme
        self.host = parsed.hostname
        self.port = parsed.port
        self.base_path = parsed.path.rstrip("/")
        self.token = token
        self._lock = threading.Lock()
        self._open: Dict[int, Tuple[http.client.HTTPConnection, bool]] = {}

    def _target(self, path: str) -> Tuple[str, str, Optional[int], str, bool]:
        """Scheme, host, port and request path of ``path`` (relative to the server URL, or
        an absolute ``http(s)://`` URL such as a region's ``data_url``), and whether it is
        our own server (only that one gets the token)."""
        if not path.startswith(("http://", "https://")):
            return self.scheme, self.host, self.port, self.base_path + path, True
        p = urllib.parse.urlsplit(path)
        if not p.hostname:
            raise NetworkError(f"{path}: not a URL with a host")
        rest = (p.path or "/") + (f"?{p.query}" if p.query else "")
        ours = (p.scheme, p.hostname, p.port) == (self.scheme, self.host, self.port) and rest.startswith(
            self.base_path + "/"
        )
        return p.scheme, p.hostname, p.port, rest, ours

    def _connect(self, scheme: str, host: str, port: Optional[int], timeout: float) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=timeout)
        return http.client.HTTPConnection(host, port, timeout=timeout)

    def abort(self, polls_only: bool) -> None:
        """Breaks the polls (or every request) in flight: they fail with NetworkError."""
        with self._lock:
            conns = [c for c, poll in self._open.values() if poll or not polls_only]
        for c in conns:
            sock = c.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float,
        abort_if: Optional[Callable[[], bool]] = None,
    ) -> "Response":
        """Sends one request; the answer's status is checked (errors raise ApiError).
        ``abort_if`` marks a poll: ``abort(polls_only=True)`` breaks it, and it is not
        sent when ``abort_if()`` is already true once connected."""
        scheme, host, port, target, ours = self._target(path)
        h = {"User-Agent": USER_AGENT, "Accept": "application/json, */*"}
        if self.token and ours:
            h["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn = self._connect(scheme, host, port, timeout)
        try:
            conn.connect()  # before registering: abort() needs the socket
            with self._lock:
                self._open[id(conn)] = (conn, abort_if is not None)
            if abort_if is not None and abort_if():
                raise ConnectionAbortedError("aborted")
            conn.request(method, target, body=data, headers=h)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            self._forget(conn)
            raise NetworkError(f"{method} {path}: {e or type(e).__name__}") from e
        r = Response(self, conn, resp, path)
        if resp.status >= 400:
            r.raise_error()
        return r

    def _forget(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._open.pop(id(conn), None)
        conn.close()


class Response:
    def __init__(self, t: Transport, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, path: str):
        self._t, self._conn, self.raw, self.path = t, conn, resp, path
        self.status = resp.status

    def header(self, name: str) -> Optional[str]:
        return self.raw.getheader(name)

    def read(self, limit: int = 256 << 20) -> bytes:
        try:
            data = self.raw.read(limit + 1)
        except (OSError, http.client.HTTPException) as e:
            raise NetworkError(f"{self.path}: reading the answer: {e or type(e).__name__}") from e
        finally:
            self.close()
        if len(data) > limit:
            raise NetworkError(f"{self.path}: answer larger than {limit} bytes")
        return data

    def json(self) -> Any:
        data = self.read()
        try:
            return json.loads(data)
        except ValueError as e:
            raise NetworkError(f"{self.path}: the answer is not JSON: {e}") from e

    def chunks(self) -> Iterator[bytes]:
        """The body in chunks; each read is bounded by the connection's timeout."""
        try:
            while True:
                chunk = self.raw.read(CHUNK)
                if not chunk:
                    return
                yield chunk
        except (OSError, http.client.HTTPException) as e:
            raise NetworkError(f"{self.path}: download interrupted: {e or type(e).__name__}") from e
        finally:
            self.close()

    def close(self) -> None:
        self._t._forget(self._conn)

    def raise_error(self) -> None:
        retry_after = parse_retry_after(self.header("Retry-After"))
        try:
            body = self.raw.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            self.close()
        code, message = error_fields(body)
        raise ApiError(self.status, code, message, retry_after)


def parse_retry_after(v: Optional[str]) -> Optional[float]:
    if not v:
        return None
    try:
        return max(0.0, float(v.strip()))
    except ValueError:
        return None  # an HTTP date: not sent by Imprint


def error_fields(body: bytes) -> Tuple[str, str]:
    try:
        e = json.loads(body)["error"]
        return str(e.get("code", "")), str(e.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", body[:200].decode("utf-8", "replace")
