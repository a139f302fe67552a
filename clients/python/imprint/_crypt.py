"""End-to-end encrypted topics (docs/encryption.md): payloads are age v1 files for the
topic's X25519 recipients. The client verifies the ciphertext's sha256, then decrypts with
the identities given to it out of band (``identity_file=``); its disk cache keeps the
ciphertext. Decryption uses ``pyrage`` (PyPI, binary wheels; ``pip install
imprint-client[encryption]``), imported only when an identity is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Union

AGE_MAGIC = b"age-encryption.org/v1\n"


class CryptError(Exception):
    """An identity file that does not load, or a payload that does not decrypt."""


def is_age(data: bytes) -> bool:
    return data.startswith(AGE_MAGIC)


def file_is_age(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_age(f.read(len(AGE_MAGIC)))


def _pyrage() -> Any:
    try:
        import pyrage  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CryptError("decrypting needs the pyrage package: pip install pyrage==1.4.0") from e
    return pyrage


def load_identities(path: Union[str, Path]) -> List[Any]:
    """The X25519 identities of an age identity file (``AGE-SECRET-KEY-1…`` lines; blank
    lines and ``#`` comments skipped, as age-keygen writes them)."""
    pyrage = _pyrage()
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise CryptError(f"identity file {p}: {e}") from e
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(pyrage.x25519.Identity.from_str(line))
        except Exception as e:
            raise CryptError(f"identity file {p}: line {n} is not an age X25519 identity (AGE-SECRET-KEY-1…): {e}") from e
    if not keys:
        raise CryptError(f"identity file {p}: no age identity (AGE-SECRET-KEY-1…) in it")
    return keys


def no_identity(topic: str, version: int) -> str:
    return (f"version {version} of {topic!r} is end-to-end encrypted (age) and this client has no identity "
            "to decrypt it: give it one (Client(identity_file=...))")


def decrypt(identities: List[Any], data: bytes) -> bytes:
    pyrage = _pyrage()
    try:
        return bytes(pyrage.decrypt(data, identities))
    except Exception as e:
        msg = str(e)
        if "No matching keys" in msg or "no matching" in msg.lower():
            raise CryptError("cannot decrypt the payload: none of the given identities is a recipient of it") from e
        raise CryptError(f"cannot decrypt the payload: {msg} (the ciphertext was altered, cut short or is not an age file)") from e
