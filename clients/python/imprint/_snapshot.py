"""Object-store snapshots: the server's worker keeps ``snapshots/<topic>.json`` in its
payload store, naming what ``*`` (a node without labels) resolves to, with the payload
inline or the key of its object in the same store. Read when the server is unreachable
and a subscription has nothing cached. ``file://`` needs nothing; ``s3://`` needs boto3
(the ``imprint-client[s3]`` extra; credentials and ``AWS_ENDPOINT_URL`` from the usual
``AWS_*`` variables). A topic encrypted at rest has a sealed manifest (and a sealed
object): opened with the keyring given (``_sealed``), as it streams."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from ._sealed import Keyring, SealError, open_manifest, open_stream
from .errors import ImprintError

MANIFEST_FORMAT = 1


class Snapshots:
    def __init__(self, url: str, keyring: Optional[Keyring] = None):
        self.url = url
        self.keyring = keyring
        parsed = urllib.parse.urlsplit(url)
        self.scheme = parsed.scheme
        if parsed.scheme == "file":
            self.dir = Path(urllib.request.url2pathname(parsed.path))
            if not self.dir.is_absolute():
                raise ValueError(f"snapshot store {url!r}: not an absolute file URL")
            self.prefix = ""
        elif parsed.scheme in ("s3", "s3a"):
            try:
                import boto3  # type: ignore[import-not-found]
            except ImportError as e:
                raise ValueError(
                    f"snapshot store {url!r}: s3:// needs boto3 (pip install 'imprint-client[s3]')"
                ) from e
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or None
            self.s3 = boto3.client("s3", endpoint_url=endpoint)
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
        else:
            raise ValueError(f"snapshot store {url!r}: unsupported scheme (use file:// or s3://)")

    def _key(self, rest: str) -> str:
        parts = [p for p in (self.prefix + "/" + rest).split("/") if p]
        return "/".join(parts)

    def _open(self, key: str) -> Optional[Iterator[bytes]]:
        """The object's bytes in chunks, None when it does not exist."""
        if self.scheme == "file":
            path = self.dir / key
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return None
            except OSError as e:
                raise ImprintError(f"snapshot object {key}: {e}") from e

            def read() -> Iterator[bytes]:
                with f:
                    yield from iter(lambda: f.read(1 << 20), b"")

            return read()
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise ImprintError(f"snapshot object {key}: {e}") from e
        return iter(obj["Body"].iter_chunks(1 << 20))

    def manifest(self, topic: str) -> Optional[Dict[str, Any]]:
        chunks = self._open(self._key(f"snapshots/{topic}.json"))
        if chunks is None:
            return None
        try:
            m = json.loads(b"".join(chunks))
        except ValueError as e:
            raise ImprintError(f"snapshot manifest of {topic}: {e}") from e
        if isinstance(m, dict) and "sealed" in m:
            try:
                m = open_manifest(self.keyring, topic, m)
            except SealError as e:
                raise SealError(f"snapshot manifest of {topic}: {e}") from e
        if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or m.get("topic") != topic:
            raise ImprintError(f"snapshot manifest of {topic}: unknown format or topic")
        return m

    def payload_chunks(self, m: Dict[str, Any]) -> Iterator[bytes]:
        """The manifest's payload (not verified here: the caller checks size and SHA-256)."""
        if m.get("data_base64") is not None:
            try:
                return iter([base64.b64decode(str(m["data_base64"]).strip(), validate=True)])
            except ValueError as e:
                raise ImprintError(f"snapshot data_base64: {e}") from e
        obj = m.get("object")
        if not obj:
            raise ImprintError("the snapshot has neither data_base64 nor object")
        if any(p in ("..", ".") for p in str(obj).split("/")):
            raise ImprintError(f"snapshot object key {obj!r}")
        chunks = self._open(self._key(str(obj)))
        if chunks is None:
            raise ImprintError(f"snapshot object {obj} is missing")
        if m.get("object_sealed") is True:
            if self.keyring is None:
                raise SealError(f"snapshot object {obj} is sealed and there is no keyring")
            return _named(str(obj), open_stream(self.keyring, chunks))
        return chunks


def _named(obj: str, plain: Iterator[bytes]) -> Iterator[bytes]:
    """A sealed object's plaintext, its failures naming the object."""
    try:
        yield from plain
    except SealError as e:
        raise SealError(f"snapshot object {obj}: {e}") from e
