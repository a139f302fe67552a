"""The background thread: one batched (long) poll for every subscription of a client,
each update handed to ``_deliver`` and its outcome reported on the next poll. Failures
back off with jitter; while the server is unreachable, subscriptions with nothing to
start from read their object-store snapshot."""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ._deliver import handle_update, start_from_snapshot
from .errors import ApiError, ImprintError, is_transient
from .subscription import Source, Subscription

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("imprint")
MAX_POLL_AFTER_S = 60.0  # the server's hint, but never more (a bad hint must not stall a node)


class Backoff:
    """Exponential, each delay drawn from ``[d/2, d]``, ``d`` doubling from min to max."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi, self.failures = lo, hi, 0

    def next(self) -> float:
        d = min(self.lo * (2 ** min(self.failures, 20)), self.hi)
        self.failures += 1
        return d / 2 + random.random() * d / 2

    def reset(self) -> None:
        self.failures = 0


def request_body(core: "Client", asked: List[Subscription[Any]], wait_s: float) -> Dict[str, Any]:
    topics: Dict[str, Optional[int]] = {}
    applied: Dict[str, Any] = {}
    for s in asked:
        topics[s.topic] = s.version
        with s.state.lock:
            if s.state.report is not None:
                applied[s.topic] = dict(s.state.report)
    return {
        "consumer": {"instance": core.instance, "labels": core.labels},
        "topics": topics,
        "applied": applied,
        "wait_ms": int(wait_s * 1000),
    }


def send_poll(core: "Client", body: Dict[str, Any], generation: Optional[int] = None) -> Dict[str, Any]:
    """One poll; with ``generation``, abandoned when the client closes or a topic is added."""
    bound = body["wait_ms"] / 1000 + core.request_timeout
    abort_if = None if generation is None else (lambda: core._stopped or core._generation != generation)
    resp = core._http.request("POST", "/api/v1/poll", body=body, timeout=bound, abort_if=abort_if).json()
    if not isinstance(resp, dict):
        raise ImprintError("poll answer is not an object")
    return resp


def forget_sent(asked: List[Subscription[Any]], body: Dict[str, Any]) -> None:
    """Reports went through: forget them, unless a newer one replaced them meanwhile."""
    for s in asked:
        with s.state.lock:
            if s.state.report is not None and s.state.report == body["applied"].get(s.topic):
                s.state.report = None


def run(core: "Client") -> None:
    backoff = Backoff(core.min_backoff, core.max_backoff)
    next_recheck: Optional[float] = None
    while not core._stopped:
        gen = core._generation
        subs = core._live()
        if not subs:
            core._pause(3600, gen)
            continue
        now = time.monotonic()
        any_stuck = any(s.state.stuck for s in subs)
        recheck_due = any_stuck and (next_recheck is None or next_recheck <= now)
        # all topics, except those stuck on a rejected version until their recheck is due
        asked = [s for s in subs if not s.state.stuck or recheck_due or s.state.report is not None]
        if not asked:
            core._pause(max(0.0, (next_recheck or now + core.recheck_rejected) - now), gen)
            continue
        # short when something needs an answer now (a new or stuck topic); else long,
        # held at most until the next recheck
        short = any(not s.settled.is_set() or s.state.stuck for s in asked)
        wait = 0.0 if short else core.long_poll
        if not short and any_stuck and next_recheck is not None:
            wait = max(0.0, min(wait, next_recheck - now))
        if recheck_due:
            next_recheck = now + core.recheck_rejected
        body = request_body(core, asked, wait)
        try:
            resp = send_poll(core, body, gen)
        except Exception as e:
            if core._stopped:
                break
            if core._generation != gen:
                continue  # a new subscription abandoned this poll: ask again, with it
            delay = _failed(core, asked, e, backoff)
        else:
            delay = _answered(core, asked, body, resp, short, backoff)
            if any(s.state.stuck for s in asked):
                next_recheck = time.monotonic() + core.recheck_rejected
        if delay > 0:
            core._pause(delay, gen)
    log.debug("imprint: poller stopped")


def _answered(
    core: "Client", asked: List[Subscription[Any]], body: Dict[str, Any], resp: Dict[str, Any], short: bool, backoff: Backoff
) -> float:
    core.metrics.gauge("imprint_client_last_poll_success_seconds", time.time())
    backoff.reset()
    forget_sent(asked, body)
    updates = resp.get("updates") or {}
    missing = resp.get("missing") or {}
    transient = False
    for s in asked:
        if s.topic in updates:
            try:
                handle_update(core, s, updates[s.topic])
            except Exception as e:
                if not is_transient(e):
                    log.exception("imprint: unexpected error delivering %s", s.topic)
                log.warning("imprint: cannot fetch %s v%s; will retry: %s", s.topic, updates[s.topic].get("version"), e)
                core.metrics.count("imprint_client_poll_errors_total", kind="download")
                transient = True
        elif s.topic in missing:
            s.state.stuck = False  # nothing is offered any more, not even the rejected version
            reason = missing[s.topic]
            level = logging.DEBUG if reason == "no_version_in_scope" or s.settled.is_set() else logging.WARNING
            log.log(level, "imprint: the server has nothing for %s: %s", s.topic, reason)
        else:
            s.confirm()  # up to date: what we hold is what we should hold
            s.state.stuck = False
        s.settled.set()
    if core._stopped:
        return 0.0
    # the server's pause is for short pollers; a poll made short here is followed by a long one at once
    hint = 0.0 if short and core.long_poll > 0 else min(float(resp.get("poll_after_ms") or 0) / 1000, MAX_POLL_AFTER_S)
    return max(hint, backoff.next()) if transient else hint


def _failed(core: "Client", asked: List[Subscription[Any]], e: Exception, backoff: Backoff) -> float:
    transient = is_transient(e)
    if transient and core._snapshots is not None:
        for s in asked:
            with s.state.lock:
                first = not s.state.snapshot_tried
                s.state.snapshot_tried = True
            if first and s.source is Source.DEFAULT:
                start_from_snapshot(core, s)
    for s in asked:
        s.settled.set()
    kind = "network"
    if isinstance(e, ApiError):
        kind = "server" if e.status >= 500 else "client"
    core.metrics.count("imprint_client_poll_errors_total", kind=kind)
    retry_after = e.retry_after if isinstance(e, ApiError) and e.retry_after is not None else 0.0
    if transient:
        d = max(backoff.next(), retry_after)
        log.warning("imprint: poll failed, retrying in %.1fs: %s", d, e)
        return d
    d = max(core.client_error_retry, retry_after)
    log.error("imprint: poll refused, retrying in %.0fs: %s", d, e)
    return d
