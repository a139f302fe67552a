"""The ``Client``: settings, the subscriptions, the background poll thread, and the
start-up order of each subscription (disk cache, then the server's first answer within
``initial_wait``, then the object-store snapshot, then the default)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, TypeVar, Union

from . import _poller
from ._cache import Store
from ._crypt import load_identities
from ._deliver import apply_fetched, flush_reports
from ._http import Transport
from ._sealed import Keyring
from ._snapshot import Snapshots
from .errors import Rejected
from .metrics import Hook, Metrics
from .subscription import Kind, Payload, Source, Subscription

T = TypeVar("T")
log = logging.getLogger("imprint")


class Client:
    """One background long poll for all of a process's subscriptions.

    ``Client("http://imprint:3000", token=..., instance=..., labels={...}, cache_dir=...)``;
    use it as a context manager or call ``close()``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        instance: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        cache_dir: Union[str, Path, None] = None,
        snapshot_store: Optional[str] = None,
        initial_wait: float = 5.0,
        long_poll: float = 30.0,
        request_timeout: float = 30.0,
        backoff: "tuple[float, float]" = (0.5, 30.0),
        startup_fallback: int = 3,
        recheck_rejected: float = 10.0,
        metrics_hook: Optional[Hook] = None,
        identity_file: Union[str, Path, None] = None,
        snapshot_keyring: Union[str, Path, None] = None,
    ):
        if not 0 <= long_poll <= 60:
            raise ValueError("long_poll must be within 0..60 s")
        self.url = url
        self.instance = instance or socket.gethostname()
        self.labels: Dict[str, str] = dict(labels or {})
        self.initial_wait = initial_wait
        self.long_poll = long_poll
        self.request_timeout = request_timeout
        self.min_backoff, self.max_backoff = backoff
        self.client_error_retry = 2 * self.max_backoff
        self.startup_fallback = startup_fallback
        self.recheck_rejected = recheck_rejected
        self.metrics = Metrics(metrics_hook)
        # age identities for end-to-end encrypted topics (docs/encryption.md): read now, so
        # a bad file is an error here, not a client that silently cannot decrypt.
        self._identities = load_identities(identity_file) if identity_file is not None else []
        self._http = Transport(url, token)
        self._store = Store(Path(cache_dir) if cache_dir is not None else None)
        # A copy of the server's keyring: opens the sealed snapshots of topics encrypted at
        # rest (docs/encryption.md "Snapshots"). Read now, so a bad file is an error here.
        if snapshot_keyring is not None and not snapshot_store:
            raise ValueError("snapshot_keyring needs snapshot_store (the store the sealed snapshots are read from)")
        keyring = Keyring(snapshot_keyring) if snapshot_keyring is not None else None
        self._snapshots = Snapshots(snapshot_store, keyring) if snapshot_store else None
        self._cache_warned = False
        self._subs: Dict[str, Subscription[Any]] = {}
        self._cond = threading.Condition()
        self._generation = 0
        self._stopped = False
        self._thread: Optional[threading.Thread] = None

    # ---------------------------------------------------------- subscribing ----
    def subscribe(self, topic: str, default: T, decoder: Callable[[bytes], T]) -> Subscription[T]:
        """The payload's bytes through ``decoder``; an exception keeps the old value."""
        return self.subscribe_payload(topic, default, lambda p: decoder(p.data or b""))

    def subscribe_json(self, topic: str, default: Any = None, decoder: Optional[Callable[[Any], T]] = None) -> Subscription[Any]:
        """JSON (then ``decoder``, e.g. a dataclass or pydantic model, if given)."""
        conv = decoder or (lambda v: v)
        return self.subscribe(topic, default, lambda b: conv(json.loads(b)))

    def subscribe_bytes(self, topic: str, default: Optional[bytes] = None) -> Subscription[Optional[bytes]]:
        return self.subscribe(topic, default, lambda b: b)

    def subscribe_file(
        self, topic: str, default: Any = None, decoder: Optional[Callable[[Path], Any]] = None
    ) -> Subscription[Any]:
        """Large payloads, streamed to a file in the cache directory: ``get()`` is its
        path (or ``decoder(path)``), the default until a version arrives."""
        conv = decoder or (lambda p: p)
        return self._subscribe(topic, default, lambda p: conv(p.path), Kind.FILE)

    def subscribe_payload(self, topic: str, default: T, decoder: Callable[[Payload], T]) -> Subscription[T]:
        """The bytes with version, checksum, content type, metadata and pinned flag."""
        return self._subscribe(topic, default, decoder, Kind.MEMORY)

    def _subscribe(self, topic: str, default: T, decoder: Callable[[Payload], T], kind: Kind) -> Subscription[T]:
        with self._cond:
            if self._stopped:
                raise RuntimeError("the client is closed")
            if topic in self._subs:
                raise ValueError(f"{topic!r} is subscribed already on this client")
        sub: Subscription[T] = Subscription(topic, default, decoder, kind)
        self._start_from_cache(sub)
        with self._cond:
            self._subs[topic] = sub
            self._generation += 1
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=_poller.run, args=(self,), name="imprint-poller", daemon=True)
                self._thread.start()
        self._http.abort(polls_only=True)  # an open long poll is abandoned: the next one includes the topic
        sub.settled.wait(self.initial_wait)
        return sub

    def _start_from_cache(self, sub: Subscription[Any]) -> None:
        cached = self._store.load(sub.topic)
        if cached is None:
            return
        m, path = cached
        u = {"version": m.version, "sha256": m.sha256, "size": m.size, "content_type": m.content_type, "metadata": m.metadata}
        try:
            fetched: Union[bytes, Path] = path if sub.kind is Kind.FILE else path.read_bytes()
            apply_fetched(self, sub, u, fetched, Source.CACHE)
        except (Rejected, OSError) as e:
            log.warning("imprint: the cached %s v%d is not usable: %s", sub.topic, m.version, e)

    # ------------------------------------------------------------- the rest ----
    def subscriptions(self) -> List[Subscription[Any]]:
        return self._live()

    def _live(self) -> List[Subscription[Any]]:
        with self._cond:
            return list(self._subs.values())

    def _pause(self, seconds: float, generation: int) -> None:
        """Sleeps, or less when the client closes or a topic is subscribed."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self._generation != generation, seconds)

    def close(self) -> None:
        """Stops polling (aborting a download), sends the last reports, keeps the cache.
        Values already handed out stay valid."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._http.abort(polls_only=False)
        if self._thread is not None:
            self._thread.join(self.request_timeout + 5)
        flush_reports(self)
        self._store.discard()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, instance={self.instance!r}, topics={len(self._subs)})"
