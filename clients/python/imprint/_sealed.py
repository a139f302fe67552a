"""Sealed snapshots of topics encrypted at rest (docs/encryption.md, "At rest"): the
server's worker seals the snapshot manifest of such a topic (``{"format": 1, "topic",
"key", "sealed": "<base64>"}``) and, for a payload kept as an object, the object too
(``"object_sealed": true``). A node opens them with a copy of the server's keyring file
(``Client(snapshot_keyring=PATH)``).

The sealed format (the Rust ``imprint_seal::format``): a header (``IMPRAR``, format 1, key
id, key version, the wrapped data key, chunk size 65536, a 7-byte STREAM nonce prefix),
then AES-256-GCM chunks of 64 KiB plaintext + 16-byte tag, the nonce of chunk ``i`` being
``prefix ‖ u32 BE i ‖ last-chunk flag`` and every chunk's associated data ``IMPRAR ‖ 1 ‖
chunk size ‖ prefix``. A keyring wraps a data key as ``nonce (12) ‖ ciphertext ‖ tag (16)``
under the key's version ``v`` with associated data ``imprint-keyring-v1 ‖ 0 ‖ id ‖ 0 ‖ v``.

Opening holds about one chunk, whatever the payload's size, and never gives out a byte
that did not authenticate: an altered, dropped, reordered or cut-off chunk is an error.
AES-GCM comes from the ``cryptography`` package (``pip install 'imprint-client[at-rest]'``),
imported only when a keyring is given."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

from .errors import ImprintError

MAGIC = b"IMPRAR"
FORMAT_VERSION = 1
CHUNK = 64 * 1024
TAG = 16
NONCE_PREFIX = 7
MAX_WRAPPED = 4096
MAX_KEY_ID = 255
KEYRING_FORMAT = 1
WRAP_AAD = b"imprint-keyring-v1"
WRAP_NONCE = 12
_KEY_ID_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:/")


class SealError(ImprintError):
    """A sealed manifest or object that does not open: said plainly, never wrong bytes."""


def _aesgcm() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as e:
        raise ValueError(
            "snapshot_keyring needs the cryptography package (AES-256-GCM): "
            "pip install 'imprint-client[at-rest]' (or cryptography>=42)"
        ) from e
    return AESGCM


def _key_id_ok(key_id: bytes) -> bool:
    return 0 < len(key_id) <= MAX_KEY_ID and all(b in _KEY_ID_BYTES for b in key_id)


class Keyring:
    """A copy of the server's keyring file, read once:
    ``{"format": 1, "keys": {"<id>": {"primary": 2, "versions": {"1": "<base64 KEK>", …}}}}``."""

    def __init__(self, path: Union[str, Path]):
        self._aesgcm = _aesgcm()
        self.path = Path(path)

        def bad(why: object) -> ValueError:
            return ValueError(f"snapshot_keyring {str(self.path)!r} is not a valid keyring: {why}")

        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"snapshot_keyring {str(self.path)!r}: {e}") from e
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise bad(e) from e
        if not isinstance(doc, dict) or set(doc) - {"format", "keys"}:
            raise bad('not {"format": 1, "keys": {…}}')
        if doc.get("format") != KEYRING_FORMAT:
            raise bad(f"format {doc.get('format')!r}, this client reads {KEYRING_FORMAT}")
        keys = doc.get("keys")
        if not isinstance(keys, dict):
            raise bad('"keys" is not an object')
        self._keks: Dict[Tuple[str, int], bytes] = {}
        for key_id, entry in keys.items():
            if not isinstance(entry, dict) or set(entry) != {"primary", "versions"}:
                raise bad(f'key {key_id!r} is not {{"primary": N, "versions": {{…}}}}')
            versions = entry["versions"]
            if not isinstance(versions, dict):
                raise bad(f'key {key_id!r}: "versions" is not an object')
            for v, kek_b64 in versions.items():
                try:
                    version = int(v)
                    if str(version) != v or not 0 <= version < 1 << 32:
                        raise ValueError(v)
                    kek = base64.b64decode(str(kek_b64), validate=True)
                except (ValueError, binascii.Error) as e:
                    raise bad(f"key {key_id!r} version {v!r}: {e}") from e
                if len(kek) != 32:
                    raise bad(f"key {key_id!r} version {v} is not 32 bytes")
                self._keks[(key_id, version)] = kek
            primary = entry["primary"]
            if type(primary) is not int or (key_id, primary) not in self._keks:
                raise bad(f"key {key_id!r} names primary version {primary!r} that it lacks")

    def unwrap(self, key_id: str, version: int, wrapped: bytes) -> bytes:
        """The 32-byte data key, or SealError (unknown id or version, not its own)."""
        if version == 0:
            raise SealError(
                f"key {key_id!r} is a KMS key (header version 0: the provider keeps the versions): "
                "a keyring cannot unwrap it"
            )
        if not any(k == key_id for k, _ in self._keks):
            raise SealError(f"the keyring {str(self.path)!r} has no key {key_id!r}")
        kek = self._keks.get((key_id, version))
        if kek is None:
            raise SealError(f"key {key_id!r} of the keyring has no version {version} (retired, or another keyring?)")
        refused = SealError(f"the data key does not unwrap with key {key_id!r} version {version}: altered or not its own")
        if len(wrapped) != WRAP_NONCE + 32 + TAG:
            raise refused
        aad = WRAP_AAD + b"\0" + key_id.encode() + b"\0" + struct.pack(">I", version)
        try:
            plain = self._aesgcm(kek).decrypt(wrapped[:WRAP_NONCE], wrapped[WRAP_NONCE:], aad)
        except Exception as e:  # cryptography's InvalidTag
            raise refused from e
        if len(plain) != 32:
            raise refused
        return bytes(plain)


@dataclass(frozen=True)
class Header:
    key_id: str
    key_version: int
    wrapped: bytes
    nonce_prefix: bytes

    def aad(self) -> bytes:
        """What every chunk authenticates besides itself (not the key fields: a rewrap keeps the chunks)."""
        return MAGIC + bytes([FORMAT_VERSION]) + struct.pack(">I", CHUNK) + self.nonce_prefix


def parse_header(buf: Union[bytes, bytearray]) -> Optional[Tuple[Header, int]]:
    """The header at the start of ``buf`` and its length; None when ``buf`` ends inside it."""
    start = min(len(buf), len(MAGIC))
    if bytes(buf[:start]) != MAGIC[:start]:
        raise SealError("not an at-rest sealed payload (bad magic)")
    at = len(MAGIC)

    def take(n: int) -> Optional[bytes]:
        nonlocal at
        if len(buf) < at + n:
            return None
        s = bytes(buf[at:at + n])
        at += n
        return s

    v = take(1)
    if v is None:
        return None
    if v[0] != FORMAT_VERSION:
        raise SealError(f"sealed payload format version {v[0]} is not known to this client")
    n = take(1)
    key_id = take(n[0]) if n is not None else None
    if key_id is None:
        return None
    if not _key_id_ok(key_id):
        raise SealError("the sealed payload's header is malformed: bad key id")
    kv = take(4)
    m = take(2) if kv is not None else None
    if kv is None or m is None:
        return None
    wrapped_len = struct.unpack(">H", m)[0]
    if not 0 < wrapped_len <= MAX_WRAPPED:
        raise SealError("the sealed payload's header is malformed: wrapped key length")
    wrapped = take(wrapped_len)
    c = take(4) if wrapped is not None else None
    if wrapped is None or c is None:
        return None
    if struct.unpack(">I", c)[0] != CHUNK:
        raise SealError("the sealed payload's header is malformed: chunk size")
    prefix = take(NONCE_PREFIX)
    if prefix is None:
        return None
    return Header(key_id.decode("ascii"), struct.unpack(">I", kv)[0], wrapped, prefix), at


class _Opener:
    """Decrypts the chunks after a header: ``push`` sealed bytes, use what it returns, then
    ``finish``. Holds back at most one sealed chunk (the last one is flagged)."""

    def __init__(self, aesgcm: Any, data_key: bytes, header: Header):
        self._aead = aesgcm(data_key)
        self._prefix = header.nonce_prefix
        self._aad = header.aad()
        self._buf = bytearray()
        self.chunk = 0

    def _open(self, sealed: bytes, last: bool) -> bytes:
        if self.chunk >= 1 << 32:
            raise SealError("the sealed payload has more chunks than its counter holds")
        nonce = self._prefix + struct.pack(">I", self.chunk) + (b"\x01" if last else b"\x00")
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except Exception as e:  # InvalidTag, or a chunk shorter than its tag
            raise SealError(
                f"the sealed payload failed authentication at chunk {self.chunk}: it was altered, truncated or reordered"
            ) from e
        self.chunk += 1
        return bytes(plain)

    def push(self, sealed: bytes) -> bytes:
        self._buf += sealed
        out = bytearray()
        at = 0
        while len(self._buf) - at > CHUNK + TAG:
            out += self._open(bytes(self._buf[at:at + CHUNK + TAG]), last=False)
            at += CHUNK + TAG
        del self._buf[:at]
        return bytes(out)

    def finish(self) -> bytes:
        return self._open(bytes(self._buf), last=True)


def open_stream(keyring: Keyring, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext of a sealed payload read as ``chunks``, piece by piece as each chunk
    authenticates; raises SealError at the first one that does not (before yielding it)."""
    buf = bytearray()
    parsed: Optional[Tuple[Header, int]] = None
    it = iter(chunks)
    for c in it:
        buf += c
        parsed = parse_header(buf)
        if parsed is not None:
            break
    if parsed is None:
        parse_header(buf)  # bad magic of a short payload says so
        raise SealError("the sealed payload ends inside its header")
    header, at = parsed
    data_key = keyring.unwrap(header.key_id, header.key_version, header.wrapped)
    opener = _Opener(keyring._aesgcm, data_key, header)
    first = opener.push(bytes(buf[at:]))
    del buf
    if first:
        yield first
    for c in it:
        plain = opener.push(c)
        if plain:
            yield plain
    last = opener.finish()
    if last:
        yield last


def open_bytes(keyring: Keyring, sealed: bytes) -> bytes:
    """A whole sealed payload held in memory (a sealed manifest)."""
    return b"".join(open_stream(keyring, [sealed]))


def open_manifest(keyring: Optional[Keyring], topic: str, doc: Dict[str, Any]) -> Any:
    """The plain manifest's JSON inside a sealed manifest ``doc`` (SealError when it does not open)."""
    key = doc.get("key")
    if doc.get("format") != 1 or doc.get("topic") != topic or not isinstance(doc.get("sealed"), str):
        raise SealError("a sealed manifest of unknown format or for another topic")
    if keyring is None:
        raise SealError(
            f"it is sealed at rest under key {json.dumps(key)} and this client has no keyring for it "
            "(Client(snapshot_keyring=...))"
        )
    try:
        raw = base64.b64decode(doc["sealed"].strip(), validate=True)
    except (ValueError, binascii.Error) as e:
        raise SealError(f"sealed: {e}") from e
    try:
        plain = open_bytes(keyring, raw)
    except SealError as e:
        raise SealError(f"it is sealed at rest under key {json.dumps(key)} and does not open: {e}") from e
    try:
        return json.loads(plain)
    except ValueError as e:
        raise SealError(f"the opened manifest is not JSON: {e}") from e
