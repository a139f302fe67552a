"""Delivering one version to one subscription: fetch it (inline ``data_base64`` or
streamed from ``data_url``, resuming with ``Range``), verify its size and SHA-256, run the
subscription's decoder, swap the value in, save it to the disk cache and record the
outcome to report. Also the two other ways a version arrives: the start-up fallback to
older versions, and the object-store snapshot read while the server is unreachable."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple, Union

from . import _crypt
from ._cache import CacheMeta, file_name
from .errors import ApiError, ImprintError, NetworkError, Rejected, VerifyError, is_transient
from .subscription import Held, Kind, Payload, Source, Subscription

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("imprint")
MAX_ATTEMPTS = 3  # of one download, each resuming where the previous one broke off
ERROR_MAX = 1000  # characters of a failure report

Fetched = Union[bytes, Path]


def _sink(core: "Client", sub: Subscription[Any], m: Dict[str, Any], chunks: Iterable[bytes]) -> Fetched:
    """Consumes ``chunks`` into memory or a temporary file, checked against the size and
    SHA-256 of ``m`` (an update or a manifest); a file is moved into place once it verifies."""
    size, sha = int(m["size"]), str(m["sha256"])
    h = hashlib.sha256()
    n = 0
    if sub.kind is Kind.MEMORY:
        buf = bytearray()
        for c in chunks:
            n += len(c)
            if n > size:
                raise VerifyError(f"payload larger than its size {size}")
            h.update(c)
            buf += c
        _check(size, sha, n, h.hexdigest())
        return bytes(buf)
    core._store.prepare(sub.topic)
    tmp = core._store.temp_path(sub.topic)
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                n += len(c)
                if n > size:
                    raise VerifyError(f"payload larger than its size {size}")
                h.update(c)
                f.write(c)
            _check(size, sha, n, h.hexdigest())
            f.flush()
            os.fsync(f.fileno())
        return core._store.adopt_file(sub.topic, int(m["version"]), sha, tmp)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check(size: int, sha: str, n: int, actual: str) -> None:
    if n != size:
        raise VerifyError(f"size mismatch: expected {size} bytes, got {n}")
    if actual != sha:
        raise VerifyError(f"checksum mismatch: expected {sha}, got {actual}")


def _download_chunks(core: "Client", url: str) -> Iterable[bytes]:
    """The payload at ``url``, resuming an interrupted transfer with ``Range``."""
    have = 0
    for attempt in range(MAX_ATTEMPTS):
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp = core._http.request("GET", url, headers=headers, timeout=core.request_timeout)
        if have and resp.status != 206:
            resp.close()
            raise _Restart()
        try:
            for c in resp.chunks():
                have += len(c)
                yield c
            return
        except NetworkError:
            if attempt + 1 == MAX_ATTEMPTS:
                raise
            log.info("imprint: download of %s broke off at %d bytes; resuming", url, have)


def download_urls(u: Dict[str, Any]) -> List[Tuple[Optional[str], str]]:
    """The URLs to try in order, each with its region: ``data_urls`` (several regions,
    docs/regions.md), else ``data_url`` alone (region None)."""
    urls = [
        (str(d.get("region") or ""), str(d["url"]))
        for d in u.get("data_urls") or []
        if isinstance(d, dict) and d.get("url")
    ]
    return urls or [(None, str(u["data_url"]))]


class _Restart(ImprintError):
    """The server sent the whole payload again instead of the range: start over."""


def fetch(core: "Client", sub: Subscription[Any], u: Dict[str, Any]) -> Tuple[Fetched, Optional[str]]:
    """The verified payload of ``u`` and the region it was downloaded from (None: inline,
    or a server with one region)."""
    if u.get("data_base64") is not None:
        try:
            data = base64.b64decode(str(u["data_base64"]).strip(), validate=True)
        except ValueError as e:
            raise Rejected(f"data_base64 is not valid base64: {e}") from e
        try:
            return _sink(core, sub, u, [data]), None
        except VerifyError as e:
            if not u.get("data_url"):
                raise Rejected(str(e)) from e
            log.warning("imprint: inline payload of %s v%s does not verify; downloading it", sub.topic, u["version"])
    if not u.get("data_url"):
        raise Rejected("the update has neither data_base64 nor data_url")
    urls = download_urls(u)
    if len(urls) > 1:
        return _fetch_failover(core, sub, u, urls)
    region, url = urls[0]
    last: Optional[Exception] = None
    for _ in range(2):  # a mismatch may be a transfer accident: once more, then reject
        try:
            return _sink(core, sub, u, _download_chunks(core, url)), region
        except _Restart:
            continue
        except VerifyError as e:
            log.warning("imprint: downloaded payload of %s v%s does not verify: %s", sub.topic, u["version"], e)
            last = e
        except ApiError as e:
            if e.transient:
                raise
            raise Rejected(str(e)) from e
    raise Rejected(str(last) if last else "download restarted twice")


def _fetch_failover(
    core: "Client", sub: Subscription[Any], u: Dict[str, Any], urls: List[Tuple[Optional[str], str]]
) -> Tuple[Fetched, Optional[str]]:
    """Several regions: each URL in order; a connect error, a 5xx or a payload that does
    not verify moves on to the next region. The version is rejected only when every
    region's copy was reachable and none verified; if a region was unreachable the failure
    is transient (retried with backoff), as the Rust client does."""
    unreachable: Optional[ImprintError] = None
    mismatch: Optional[VerifyError] = None
    for region, url in urls:
        try:
            fetched = _sink(core, sub, u, _download_chunks(core, url))
        except VerifyError as e:
            log.warning("imprint: the %s copy of %s v%s does not verify (%s); trying the next region",
                        region, sub.topic, u["version"], e)
            mismatch = e
        except (NetworkError, _Restart) as e:
            log.warning("imprint: region %s failed for %s v%s (%s); trying the next region",
                        region, sub.topic, u["version"], e)
            unreachable = e if isinstance(e, NetworkError) else NetworkError(f"{url}: the range was not honoured")
        except ApiError as e:
            if e.status < 500:
                if e.transient:
                    raise
                raise Rejected(str(e)) from e
            log.warning("imprint: region %s failed for %s v%s (%s); trying the next region",
                        region, sub.topic, u["version"], e)
            unreachable = e
        else:
            core.metrics.count("imprint_client_region_downloads_total", region=region or "")
            return fetched, region
        core.metrics.count("imprint_client_region_failovers_total", region=region or "")
    if unreachable is not None:
        raise unreachable
    raise Rejected(str(mismatch) if mismatch else "no region to download from")


def apply_fetched(
    core: "Client", sub: Subscription[Any], u: Dict[str, Any], fetched: Fetched, source: Source,
    region: Optional[str] = None,
) -> None:
    """Decodes a verified payload; on success swaps it in and caches it (else Rejected).
    An age payload (an end-to-end encrypted topic) is decrypted in memory first: the cache
    keeps the ciphertext. A file payload stays the ciphertext file (``Payload.encrypted``,
    ``Payload.plaintext()`` decrypts it)."""
    data = fetched if isinstance(fetched, bytes) else None
    encrypted = (data is not None and _crypt.is_age(data)) or (isinstance(fetched, Path) and _crypt.file_is_age(fetched))
    if encrypted and not core._identities:
        raise Rejected(_crypt.no_identity(sub.topic, int(u["version"])))
    if data is not None and encrypted:
        try:
            data = _crypt.decrypt(core._identities, data)
        except _crypt.CryptError as e:
            raise Rejected(str(e)) from e
    p = Payload(
        topic=sub.topic,
        version=int(u["version"]),
        sha256=str(u["sha256"]),
        content_type=str(u.get("content_type") or ""),
        metadata=dict(u.get("metadata") or {}),
        pinned=bool(u.get("pinned", False)),
        source=source,
        data=data,
        path=fetched if isinstance(fetched, Path) else None,
        identities=core._identities if isinstance(fetched, Path) and encrypted else None,
        region=region,
    )
    try:
        value = sub.decode(p)
    except Exception as e:  # the decoder's failure is the version's failure
        if isinstance(fetched, Path) and fetched.name != file_name(sub.version or 0, sub.current().sha256 or ""):
            fetched.unlink(missing_ok=True)
        raise Rejected(f"decode failed: {type(e).__name__}: {e}") from e
    sub.swap(Held(value, p.version, source, p.sha256, p.pinned, region))
    core.metrics.gauge("imprint_client_version", p.version, topic=sub.topic)
    core.metrics.count("imprint_client_updates_applied_total", topic=sub.topic)
    log.info("imprint: %s v%d applied (source %s)", sub.topic, p.version, source.value)
    _save(core, sub.topic, u, fetched)


def _save(core: "Client", topic: str, u: Dict[str, Any], fetched: Fetched) -> None:
    store = core._store
    if not store.persistent:
        return
    try:
        path = fetched if isinstance(fetched, Path) else store.write_payload(topic, u["version"], u["sha256"], fetched)
        store.commit(
            CacheMeta(
                topic=topic,
                version=int(u["version"]),
                sha256=str(u["sha256"]),
                size=int(u["size"]),
                file=path.name,
                content_type=str(u.get("content_type") or ""),
                metadata=dict(u.get("metadata") or {}),
                saved_at=int(time.time()),
            )
        )
    except OSError as e:
        if not core._cache_warned:
            core._cache_warned = True
            log.warning("imprint: cannot write the disk cache in %s; going on without it: %s", store.root, e)


def handle_update(core: "Client", sub: Subscription[Any], u: Dict[str, Any]) -> None:
    """One update: deliver it, record the outcome, and at start-up fall back to older
    versions when it does not apply. Raises only for transient failures."""
    key = (int(u["version"]), bool(u.get("pinned", False)))
    st = sub.state
    with st.lock:
        if st.rejected == key:
            st.stuck = True
            return
        st.stuck = False
    first = sub.source is not Source.SERVER
    try:
        fetched, region = fetch(core, sub, u)
        apply_fetched(core, sub, u, fetched, Source.SERVER, region)
    except Rejected as e:
        msg = str(e)[:ERROR_MAX]
        log.warning("imprint: %s v%d rejected, keeping the current value: %s", sub.topic, key[0], msg)
        core.metrics.count("imprint_client_apply_failures_total", topic=sub.topic)
        with st.lock:
            st.rejected, st.stuck = key, True
            st.report = {"version": key[0], "ok": False, "error": msg}
        if first and core.startup_fallback > 0:
            _fallback(core, sub, key[0])
        return
    with st.lock:
        st.rejected = None
        st.report = {"version": key[0], "ok": True}
        if sub.served_region is not None:
            st.report["region"] = sub.served_region


def _fallback(core: "Client", sub: Subscription[Any], failed: int) -> None:
    held = sub.version or 0
    limit = min(core.startup_fallback * 4 + 10, 500)
    try:
        listing = core._http.request(
            "GET", f"/api/v1/topics/{sub.topic}/versions?limit={limit}", timeout=core.request_timeout
        ).json()
        versions = listing["versions"]
    except (ImprintError, KeyError, TypeError) as e:
        log.warning("imprint: cannot list older versions of %s to fall back to: %s", sub.topic, e)
        return
    labels = core.labels
    candidates = [
        v
        for v in versions
        if held < int(v["version"]) < failed
        and not v.get("purged")
        and any(all(labels.get(k) == val for k, val in (s.get("selector") or {}).items()) for s in v.get("scopes") or [])
    ][: core.startup_fallback]
    for v in candidates:
        u = {
            "version": int(v["version"]),
            "pinned": False,
            "metadata": v.get("metadata") or {},
            "content_type": v.get("content_type") or "",
            "size": int(v["size"]),
            "sha256": v["sha256"],
            "data_url": f"/api/v1/topics/{sub.topic}/versions/{int(v['version'])}/data",
        }
        try:
            fetched, region = fetch(core, sub, u)
            apply_fetched(core, sub, u, fetched, Source.SERVER, region)
            log.warning("imprint: %s started from v%d: the newest (v%d) does not apply", sub.topic, u["version"], failed)
            return
        except Rejected as e:
            log.warning("imprint: older version %s v%d does not apply either: %s", sub.topic, u["version"], e)
            core.metrics.count("imprint_client_apply_failures_total", topic=sub.topic)
        except Exception as e:
            if not is_transient(e):
                raise
            log.warning("imprint: cannot fetch older version %s v%d; giving up the fallback: %s", sub.topic, u["version"], e)
            return


def start_from_snapshot(core: "Client", sub: Subscription[Any]) -> None:
    """Starts a subscription from its topic's snapshot if one verifies and decodes; never raises."""
    snaps = core._snapshots
    if snaps is None:
        return
    try:
        m = snaps.manifest(sub.topic)
        if m is None:
            log.info("imprint: no snapshot of %s in %s", sub.topic, snaps.url)
            return
        fetched = _sink(core, sub, m, snaps.payload_chunks(m))
        apply_fetched(core, sub, {**m, "pinned": False}, fetched, Source.SNAPSHOT)
        log.warning("imprint: server unreachable: %s started from the snapshot v%s", sub.topic, m["version"])
    except Exception as e:
        log.warning("imprint: the snapshot of %s is not usable; keeping the default: %s", sub.topic, e)


def flush_reports(core: "Client") -> None:
    """At close: the outcomes not reported yet, in one short bounded poll."""
    from ._poller import forget_sent, request_body, send_poll

    pending = [s for s in core._live() if s.state.report is not None]
    if not pending:
        return
    body = request_body(core, pending, 0)
    saved = core.request_timeout
    try:
        core.request_timeout = min(saved, 5.0)
        send_poll(core, body)
        forget_sent(pending, body)
    except Exception as e:
        log.debug("imprint: could not send the last apply reports: %s", e)
    finally:
        core.request_timeout = saved
