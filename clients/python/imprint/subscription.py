"""A subscription: the value the application reads (swapped atomically, never blocking),
where it came from, the listeners told of changes, and the poller's bookkeeping for the
topic (the outcome to report, the rejected version, whether the first answer came)."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Generic, List, Optional, Tuple, TypeVar

T = TypeVar("T")
log = logging.getLogger("imprint")

class Source(str, enum.Enum):
    """Where the value being served came from."""

    SERVER = "server"
    CACHE = "cache"
    SNAPSHOT = "snapshot"
    DEFAULT = "default"

class Kind(enum.Enum):
    MEMORY = "memory"  # the decoder gets bytes
    FILE = "file"  # the payload is streamed to a file; the decoder gets its path

@dataclass(frozen=True)
class Payload:
    """One verified version as the decoder of ``subscribe_payload`` sees it."""

    topic: str
    version: int
    sha256: str
    content_type: str
    metadata: Dict[str, str]
    pinned: bool
    source: Source
    data: Optional[bytes] = None
    path: Optional[Path] = None
    # The client's identities, for a file payload of an end-to-end encrypted topic.
    identities: Optional[List[Any]] = field(default=None, repr=False)
    # The region whose copy was downloaded (``data_urls``, docs/regions.md); None for an
    # inline payload, a server with one region, the cache and the snapshot.
    region: Optional[str] = None

    @property
    def encrypted(self) -> bool:
        """A file payload that is an age file still to be decrypted (``plaintext()``)."""
        return self.identities is not None

    def plaintext(self) -> bytes:
        """The payload's plaintext: ``data``, or the file decrypted with the identities."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        raw = self.path.read_bytes()
        if self.identities is None:
            return raw
        from ._crypt import decrypt

        return decrypt(self.identities, raw)

@dataclass(frozen=True)
class Held(Generic[T]):
    """Value, version, source, checksum, pinned flag and served region, read together."""

    value: T
    version: Optional[int]
    source: Source
    sha256: Optional[str] = None
    pinned: bool = False
    region: Optional[str] = None

@dataclass
class _State:
    report: Optional[Dict[str, Any]] = None  # {"version", "ok", "error"?} not sent yet
    rejected: Optional[Tuple[int, bool]] = None  # (version, pinned) that did not apply
    stuck: bool = False  # only the rejected version is on offer
    snapshot_tried: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

class Subscription(Generic[T]):
    """What ``Client.subscribe*`` returns. ``get()`` never blocks and never fails."""

    def __init__(self, topic: str, default: T, decoder: Callable[[Payload], T], kind: Kind):
        self.topic = topic
        self._decode = decoder
        self.kind = kind
        self._held: Held[T] = Held(default, None, Source.DEFAULT)
        self._listeners: List[Callable[[T], None]] = []
        self._cond = threading.Condition()
        self._waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[T]"]] = []
        self._changes = 0
        self.state = _State()
        self.settled = threading.Event()

    # ------------------------------------------------------------ reading ----
    def get(self) -> T:
        """The current value (or the default): a plain attribute read, never blocking."""
        return self._held.value

    def current(self) -> Held[T]:
        """Value, version, source, checksum and pinned flag of one moment."""
        return self._held

    @property
    def version(self) -> Optional[int]:
        """The version held (whatever its source), None while serving the default."""
        return self._held.version

    @property
    def source(self) -> Source:
        return self._held.source

    @property
    def served_region(self) -> Optional[str]:
        """The region whose copy of the held version was downloaded (docs/regions.md):
        None while nothing was downloaded from a server with several regions."""
        return self._held.region

    # ---------------------------------------------------------- listening ----
    def on_change(self, fn: Callable[[T], None]) -> Callable[[], None]:
        """Calls ``fn(value)`` (on the client's thread) after each swap; returns an unsubscribe."""
        with self._cond:
            self._listeners.append(fn)

        def remove() -> None:
            with self._cond:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return remove

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the value changes (True) or ``timeout`` passes (False)."""
        with self._cond:
            seen = self._changes
            return self._cond.wait_for(lambda: self._changes != seen, timeout)

    async def wait_for_change(self) -> T:
        """Resolves with the next value swapped in (wrap in ``asyncio.wait_for`` to bound it)."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[T]" = loop.create_future()
        with self._cond:
            self._waiters.append((loop, fut))
        try:
            return await fut
        finally:
            with self._cond:
                self._waiters = [(lp, f) for lp, f in self._waiters if f is not fut]

    async def changes(self):  # type: ignore[no-untyped-def]
        """Async iterator of the values swapped in from now on."""
        while True:
            yield await self.wait_for_change()

    # --------------------------------------------------- the poller's side ----
    def decode(self, p: Payload) -> T:
        return self._decode(p)

    def swap(self, held: Held[T]) -> None:
        self._held = held  # one reference store: readers see the old value or the new one
        with self._cond:
            self._changes += 1
            self._cond.notify_all()
            listeners = list(self._listeners)
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut, held.value)
        for fn in listeners:
            try:
                fn(held.value)
            except Exception:  # a listener's bug must not stop the client
                log.exception("imprint: a listener of %s raised", self.topic)

    def confirm(self) -> None:
        """The server says what we hold is current: its source becomes the server."""
        h = self._held
        if h.version is not None and h.source is not Source.SERVER:
            self._held = Held(h.value, h.version, Source.SERVER, h.sha256, h.pinned, h.region)

def _resolve(fut: "asyncio.Future[Any]", value: Any) -> None:
    if not fut.done():
        fut.set_result(value)

