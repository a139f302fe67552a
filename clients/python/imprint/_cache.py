"""The disk cache: per topic, the last payload that applied, so a node whose server is
unreachable at start-up starts from it. Also where file payloads land.

Same layout as the Rust client: ``<dir>/<topic>/v<version>-<sha256[:16]>.bin`` (the
payload) and ``<dir>/<topic>/meta.json`` (which file is current, its version and SHA-256).
Every write goes to a ``.tmp-*`` file that is synced, then renamed: a crash leaves the
old state or the new one. The previous payload file is kept; older ones are removed."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

META = "meta.json"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600


@dataclass
class CacheMeta:
    topic: str
    version: int
    sha256: str
    size: int
    file: str
    content_type: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    saved_at: int = 0


def file_name(version: int, sha256: str) -> str:
    return f"v{version}-{sha256[:16]}.bin"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """A directory of per-topic payloads. ``persistent=False``: a private temporary
    directory (no cache configured), never read back, removed by ``discard()``."""

    def __init__(self, root: Optional[Path]):
        self.persistent = root is not None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="imprint-"))

    def discard(self) -> None:
        if not self.persistent:
            shutil.rmtree(self.root, ignore_errors=True)

    def topic_dir(self, topic: str) -> Path:
        # topic names are validated by the server ([a-z0-9][a-z0-9._-]*): never "..", never "/"
        return self.root / topic

    def prepare(self, topic: str) -> Path:
        d = self.topic_dir(topic)
        d.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for e in d.iterdir():
            try:
                if e.name.startswith(TMP_PREFIX) and now - e.stat().st_mtime > STALE_TMP_S:
                    e.unlink()
            except OSError:
                pass
        return d

    def temp_path(self, topic: str) -> Path:
        return self.topic_dir(topic) / f"{TMP_PREFIX}{secrets.token_hex(8)}"

    def write_payload(self, topic: str, version: int, sha256: str, data: bytes) -> Path:
        self.prepare(topic)
        tmp = self.temp_path(topic)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return self.adopt_file(topic, version, sha256, tmp)

    def adopt_file(self, topic: str, version: int, sha256: str, tmp: Path) -> Path:
        final = self.topic_dir(topic) / file_name(version, sha256)
        os.replace(tmp, final)
        _sync_dir(final.parent)
        return final

    def commit(self, meta: CacheMeta) -> None:
        """Makes ``meta.file`` the topic's current payload; keeps the previous one."""
        d = self.prepare(meta.topic)
        previous = self.load_meta(meta.topic)
        tmp = self.temp_path(meta.topic)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(meta), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / META)
        _sync_dir(d)
        keep = {meta.file, META}
        if previous is not None:
            keep.add(previous.file)
        for e in d.iterdir():
            if e.name.endswith(".bin") and e.name not in keep:
                try:
                    e.unlink()
                except OSError:
                    pass

    def load_meta(self, topic: str) -> Optional[CacheMeta]:
        try:
            raw = json.loads((self.topic_dir(topic) / META).read_text(encoding="utf-8"))
            m = CacheMeta(
                topic=str(raw["topic"]),
                version=int(raw["version"]),
                sha256=str(raw["sha256"]),
                size=int(raw["size"]),
                file=str(raw["file"]),
                content_type=str(raw.get("content_type", "")),
                metadata=dict(raw.get("metadata") or {}),
                saved_at=int(raw.get("saved_at", 0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if m.topic != topic or "/" in m.file or m.file.startswith("."):
            return None
        return m

    def load(self, topic: str) -> Optional["tuple[CacheMeta, Path]"]:
        """The cached payload of ``topic`` if it is there and matches its SHA-256."""
        if not self.persistent:
            return None
        m = self.load_meta(topic)
        if m is None:
            return None
        path = self.topic_dir(topic) / m.file
        try:
            if path.stat().st_size != m.size or sha256_file(path) != m.sha256:
                return None
        except OSError:
            return None
        return m, path
