"""End-to-end encrypted topics (docs/encryption.md) against the real server: with the
identity file the client holds the plaintext and its cache only ciphertext; without it, or
with a tampered chunk, the version is rejected and the error reaches the server."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from conftest import Server, eventually

from imprint import Client, Source

try:  # pinned: pyrage==1.4.0 (./dev installs it); missing under CI is a failure
    import pyrage  # type: ignore[import-not-found]
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("pyrage is not installed (pip install pyrage==1.4.0)", allow_module_level=True)

MARKER = "PLAINTEXT-MARKER-7f3a"


def e2e_topic(server: Server, recipient: str) -> str:
    name = f"e2e.{secrets.token_hex(4)}"
    server.ok("POST", "/api/v1/topics", {"name": name, "encryption": {"mode": "end_to_end", "recipients": [recipient]}})
    return name


def error_of(server: Server, topic: str, instance: str) -> str:
    def found() -> str:
        c = next((c for c in server.consumers(topic) if c["instance"] == instance), None)
        return str(c["last_error"]) if c and c.get("last_error") else ""
    return eventually(found, what="the reported error")


def test_decrypts_with_the_identity_and_caches_ciphertext(server: Server, tmp_path: Path) -> None:
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    key = tmp_path / "key.txt"
    key.write_text(f"# public key: {recipient}\n{ident}\n")
    topic = e2e_topic(server, recipient)
    server.publish_raw(topic, pyrage.encrypt(json.dumps({"password": MARKER}).encode(), [ident.to_public()]))
    # Plaintext is refused by the server for such a topic.
    status, body = server.api("POST", f"/api/v1/topics/{topic}/versions", {"data": "{}"})
    assert status == 422 and body["error"]["code"] == "not_encrypted", body

    cache = tmp_path / "cache"
    with Client(server.url, instance="py-e2e-1", cache_dir=cache, identity_file=key) as c:
        sub = c.subscribe_json(topic, None)
        assert sub.get() == {"password": MARKER} and sub.source is Source.SERVER
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files, "the cache was written"
    for p in files:
        assert MARKER.encode() not in p.read_bytes(), f"{p} holds plaintext"
    # A restart from the cache (server unreachable) decrypts the cached ciphertext.
    with Client("http://127.0.0.1:9", instance="py-e2e-1", cache_dir=cache, identity_file=key, initial_wait=1) as c:
        sub = c.subscribe_json(topic, None)
        assert sub.get() == {"password": MARKER} and sub.source is Source.CACHE

    # Without an identity: rejected, reported; the default stays.
    with Client(server.url, instance="py-e2e-2") as c:
        sub = c.subscribe_json(topic, "default")
        assert sub.get() == "default"
        assert "no identity" in error_of(server, topic, "py-e2e-2")

    # A tampered chunk: rejected with a clear error, the old value stays.
    with Client(server.url, instance="py-e2e-3", identity_file=key) as c:
        sub = c.subscribe_json(topic, None)
        bad = bytearray(pyrage.encrypt(b'{"password": "new"}', [ident.to_public()]))
        bad[-2] ^= 1
        server.publish_raw(topic, bytes(bad))
        assert "cannot decrypt the payload" in error_of(server, topic, "py-e2e-3")
        assert sub.get() == {"password": MARKER} and sub.version == 1


def test_a_bad_identity_file_is_an_error(tmp_path: Path) -> None:
    key = tmp_path / "bad.txt"
    key.write_text("not a key\n")
    with pytest.raises(Exception, match="AGE-SECRET-KEY-1"):
        Client("http://127.0.0.1:9", identity_file=key)
