"""Sealed snapshots of topics encrypted at rest (docs/encryption.md "Snapshots"), opened
with ``Client(snapshot_keyring=...)``, on the fixtures the Rust implementation made
(clients/testdata/sealed, seal/examples/sealed_fixtures.rs): a sealed manifest with an inline
payload (key ``orders`` v1) and one naming a sealed three-chunk object (``orders`` v2)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from conftest import REPO, dead_url

from imprint import AsyncClient, Client, Source

try:  # cryptography>=42 (./dev installs it, extra "at-rest"); missing under CI is a failure
    import cryptography  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("cryptography is not installed (pip install 'cryptography>=42')", allow_module_level=True)

from imprint._sealed import CHUNK, TAG, Keyring, SealError, parse_header

FIXTURES = REPO / "clients" / "testdata" / "sealed"
PLAIN = (FIXTURES / "object.plain").read_bytes()
SEALED = (FIXTURES / "object.sealed").read_bytes()
INLINE = b'{"password": "hunter2", "rates": [1, 2, 3]}'


def store(tmp_path: Path, *, inline: Optional[Dict[str, Any]] = None, obj: Optional[bytes] = None) -> str:
    """A snapshot store with the fixtures' manifests (``inline`` replaces inline.json's,
    ``obj`` the sealed object's bytes)."""
    root = tmp_path / "store"
    (root / "snapshots").mkdir(parents=True)
    (root / "snapshots" / "orders.inline.json").write_text(
        json.dumps(inline) if inline is not None else (FIXTURES / "inline.json").read_text())
    shutil.copy(FIXTURES / "object.json", root / "snapshots" / "orders.object.json")
    (root / "object.sealed").write_bytes(SEALED if obj is None else obj)
    return root.as_uri()


def client(tmp_path: Path, url: str, keyring: Optional[Path] = FIXTURES / "keyring.json") -> Client:
    return Client(dead_url(), snapshot_store=url, snapshot_keyring=keyring, cache_dir=tmp_path / "cache",
                  initial_wait=5.0)


def header_len(sealed: bytes) -> int:
    parsed = parse_header(sealed)
    assert parsed is not None
    return parsed[1]


def with_version(sealed: bytes, version: int) -> bytes:
    """The sealed bytes with the header's key version replaced."""
    at = len(b"IMPRAR") + 1
    at += 1 + sealed[at]
    return sealed[:at] + struct.pack(">I", version) + sealed[at + 4:]


def test_the_inline_sealed_manifest_opens_to_its_bytes_and_metadata(tmp_path: Path) -> None:
    with client(tmp_path, store(tmp_path)) as c:
        sub = c.subscribe_payload("orders.inline", None, lambda p: p)
        assert sub.source is Source.SNAPSHOT and sub.version == 3
        p = sub.get()
        assert p is not None and p.data == INLINE and p.sha256 == hashlib.sha256(INLINE).hexdigest()
        assert p.metadata == {"team": "payments"} and p.content_type == "application/json"
        assert c.subscribe_json("t.none", "d").source is Source.DEFAULT


def test_the_sealed_object_opens_as_it_streams_into_memory_and_into_a_file(tmp_path: Path) -> None:
    assert len(PLAIN) == 150_000 and len(SEALED) == header_len(SEALED) + 150_000 + 3 * TAG
    with client(tmp_path, store(tmp_path)) as c:
        sub = c.subscribe_bytes("orders.object")
        assert sub.source is Source.SNAPSHOT and sub.version == 7 and sub.get() == PLAIN
    with client(tmp_path / "f", store(tmp_path / "f")) as c:
        f = c.subscribe_file("orders.object")
        assert f.source is Source.SNAPSHOT and f.get().read_bytes() == PLAIN


def test_the_asyncio_client_takes_the_keyring_too(tmp_path: Path) -> None:
    async def run() -> bytes:
        async with AsyncClient(dead_url(), snapshot_store=store(tmp_path), snapshot_keyring=FIXTURES / "keyring.json",
                               cache_dir=tmp_path / "cache") as c:
            sub = await c.subscribe_bytes("orders.object")
            assert sub.source is Source.SNAPSHOT
            return sub.get() or b""

    assert asyncio.run(run()) == PLAIN


def test_without_a_keyring_a_sealed_snapshot_is_not_used_and_says_why(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="imprint")
    with client(tmp_path, store(tmp_path), keyring=None) as c:
        assert c.subscribe_bytes("orders.inline", b"d").get() == b"d"
        assert c.subscribe_bytes("orders.object", b"d").source is Source.DEFAULT
    assert 'sealed at rest under key "orders"' in caplog.text


def test_another_keyring_with_the_same_ids_opens_nothing(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="imprint")
    other = tmp_path / "other.json"

    def kek() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    other.write_text(json.dumps({"format": 1, "keys": {"orders": {"primary": 2, "versions": {"1": kek(), "2": kek()}}}}))
    with client(tmp_path, store(tmp_path), keyring=other) as c:
        assert c.subscribe_bytes("orders.inline", b"d").get() == b"d"
        assert c.subscribe_bytes("orders.object", b"d").get() == b"d"
    assert "does not unwrap with key 'orders' version 1" in caplog.text
    assert "does not unwrap with key 'orders' version 2" in caplog.text


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_a_flipped_byte_in_any_chunk_of_the_object_is_never_served(tmp_path: Path, chunk: int, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="imprint")
    at = header_len(SEALED) + chunk * (CHUNK + TAG) + 1000
    spoiled = SEALED[:at] + bytes([SEALED[at] ^ 1]) + SEALED[at + 1:]
    with client(tmp_path, store(tmp_path, obj=spoiled)) as c:
        assert c.subscribe_bytes("orders.object", b"d").source is Source.DEFAULT
        assert c.subscribe_file("orders.inline").source is Source.SNAPSHOT  # the other topic still opens
    with client(tmp_path / "f", store(tmp_path / "f", obj=spoiled)) as c:
        assert c.subscribe_file("orders.object", "d").get() == "d"
    assert f"failed authentication at chunk {chunk}" in caplog.text
    # a file subscription leaves no partial bytes behind
    assert not [p for p in (tmp_path / "f" / "cache").rglob("*") if p.is_file() and p.stat().st_size >= CHUNK]


def test_a_truncated_object_or_a_header_naming_version_3_is_not_used(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="imprint")
    cut = SEALED[:header_len(SEALED) + 2 * (CHUNK + TAG)]  # the last chunk dropped
    with client(tmp_path, store(tmp_path, obj=cut)) as c:
        assert c.subscribe_bytes("orders.object", b"d").get() == b"d"
    assert "failed authentication at chunk 1" in caplog.text
    caplog.clear()
    with client(tmp_path / "v", store(tmp_path / "v", obj=with_version(SEALED, 3))) as c:
        assert c.subscribe_bytes("orders.object", b"d").get() == b"d"
    assert "has no version 3" in caplog.text
    caplog.clear()
    doc = json.loads((FIXTURES / "inline.json").read_text())
    doc["sealed"] = base64.b64encode(with_version(base64.b64decode(doc["sealed"]), 3)).decode()
    with client(tmp_path / "m", store(tmp_path / "m", inline=doc)) as c:
        assert c.subscribe_bytes("orders.inline", b"d").get() == b"d"
    assert "has no version 3" in caplog.text


def test_an_altered_sealed_manifest_or_a_kms_header_is_not_used(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="imprint")
    doc = json.loads((FIXTURES / "inline.json").read_text())
    raw = bytearray(base64.b64decode(doc["sealed"]))
    raw[-20] ^= 0x80
    doc["sealed"] = base64.b64encode(bytes(raw)).decode()
    with client(tmp_path, store(tmp_path, inline=doc)) as c:
        assert c.subscribe_bytes("orders.inline", b"d").get() == b"d"
    assert "failed authentication at chunk 0" in caplog.text
    ring = Keyring(FIXTURES / "keyring.json")
    with pytest.raises(SealError, match="KMS key"):
        ring.unwrap("orders", 0, b"x" * 60)
    with pytest.raises(SealError, match="has no key 'payments'"):
        ring.unwrap("payments", 1, b"x" * 60)


def test_a_keyring_that_does_not_parse_or_no_store_is_a_configuration_error(tmp_path: Path) -> None:
    url = store(tmp_path)
    bad = tmp_path / "bad.json"
    for text in ["{not json", '{"format": 2, "keys": {}}', '{"format": 1, "keys": {"k": {"primary": 2, "versions": {}}}}',
                 '{"format": 1, "keys": {"k": {"primary": 1, "versions": {"1": "c2hvcnQ="}}}}']:
        bad.write_text(text)
        with pytest.raises(ValueError, match="bad.json"):
            Client(dead_url(), snapshot_store=url, snapshot_keyring=bad)
    with pytest.raises(ValueError, match="missing.json"):
        Client(dead_url(), snapshot_store=url, snapshot_keyring=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="needs snapshot_store"):
        Client(dead_url(), snapshot_keyring=FIXTURES / "keyring.json")
