"""Unit behaviour of the client against a scripted fake server: the one batched poll,
verification, the old value on failure and its report, the re-check of a rejected
version, start-up order (cache, snapshot, default), backoff, Retry-After and shutdown."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Dict

import pytest
from conftest import Fake, dead_url, eventually

from imprint import Client, Source
from imprint._cache import CacheMeta, Store, file_name
from imprint._poller import Backoff


def update(version: int, data: bytes, *, inline: bool = True, sha: str = "", pinned: bool = False,
           topic: str = "t.a") -> Dict[str, Any]:
    u: Dict[str, Any] = {
        "version": version, "pinned": pinned, "metadata": {}, "content_type": "application/json",
        "size": len(data), "sha256": sha or hashlib.sha256(data).hexdigest(),
        "data_url": f"/api/v1/topics/{topic}/versions/{version}/data",
    }
    if inline:
        u["data_base64"] = base64.b64encode(data).decode()
    return u


def answer(updates: Dict[str, Any] = {}, missing: Dict[str, str] = {}, after: int = 0) -> Any:
    return (200, {"updates": updates, "missing": missing, "poll_after_ms": after}, {})


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    b = Backoff(0.5, 30)
    first = b.next()
    assert 0.25 <= first <= 0.5
    for _ in range(30):
        last = b.next()
        assert last <= 30
    assert last >= 15
    b.reset()
    assert b.next() <= 0.5


def test_unreachable_server_costs_no_wait_and_serves_the_default() -> None:
    with Client(dead_url(), initial_wait=5) as c:
        start = time.monotonic()
        sub = c.subscribe_json("t.a", {"d": 1})
        took = time.monotonic() - start
        assert sub.get() == {"d": 1} and sub.source is Source.DEFAULT and sub.version is None
    assert took < 4, "a refused connection is an answer"


def test_one_poll_for_all_topics_with_held_versions_labels_and_token(fake: Fake) -> None:
    data = b'{"a": 1}'
    fake.on_poll = lambda body: answer({"t.a": update(3, data)} if body["topics"].get("t.a") is None else {})
    with Client(fake.url, token="tok", instance="n1", labels={"region": "eu"}, long_poll=0.2) as c:
        a = c.subscribe_json("t.a", None)
        c.subscribe_json("t.b", "b-default")
        assert a.get() == {"a": 1} and a.version == 3 and a.source is Source.SERVER
        last = eventually(lambda: [p for p in fake.polls if set(p["topics"]) == {"t.a", "t.b"}], what="a batched poll")[-1]
    assert last["consumer"] == {"instance": "n1", "labels": {"region": "eu"}}
    assert last["topics"]["t.a"] == 3
    assert all(r[2].get("Authorization") == "Bearer tok" for r in fake.requests)
    reports = [p["applied"]["t.a"] for p in fake.polls if "t.a" in p.get("applied", {})]
    assert reports[0] == {"version": 3, "ok": True}


def test_a_bad_payload_keeps_the_old_value_is_reported_and_not_retried(fake: Fake) -> None:
    good, bad = b'{"v": 1}', b"not json"
    offer = {"u": update(1, good)}
    fake.on_poll = lambda body: answer({"t.a": offer["u"]} if body["topics"]["t.a"] != offer["u"]["version"] else {})
    seen = []
    with Client(fake.url, long_poll=0.1, recheck_rejected=0.3) as c:
        sub = c.subscribe_json("t.a", None)
        sub.on_change(seen.append)
        assert sub.get() == {"v": 1}
        offer["u"] = update(2, bad)
        failed = eventually(lambda: [p["applied"]["t.a"] for p in fake.polls
                                     if p.get("applied", {}).get("t.a", {}).get("ok") is False], what="a failure report")
        assert failed[0]["version"] == 2 and "decode failed" in failed[0]["error"]
        assert sub.get() == {"v": 1} and sub.version == 1
        n = len(fake.polls)
        time.sleep(0.5)
        # stuck on the rejected version: short polls every recheck_rejected, not a spin
        assert len(fake.polls) - n <= 4
        assert not [r for r in fake.requests if r[1].endswith("/2/data")], "inline: nothing downloaded"
        offer["u"] = update(3, b'{"v": 3}')
        eventually(lambda: sub.version == 3, what="the fix picked up")
        assert seen == [{"v": 3}]


def test_a_checksum_mismatch_is_downloaded_once_more_then_rejected(fake: Fake) -> None:
    data = b"payload"
    u = update(5, data, inline=False, sha="0" * 64)
    fake.files[u["data_url"]] = data
    fake.on_poll = lambda body: answer({"t.a": u})
    with Client(fake.url, long_poll=0.1, startup_fallback=0) as c:
        sub = c.subscribe_bytes("t.a", b"default")
        eventually(lambda: any(p.get("applied", {}).get("t.a", {}).get("ok") is False for p in fake.polls))
        assert sub.get() == b"default"
    downloads = [r for r in fake.requests if r[1] == u["data_url"]]
    assert len(downloads) == 2


def test_downloads_stream_to_a_file_and_the_cache_serves_the_next_start(fake: Fake, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    u = update(7, data, inline=False, topic="m.model")
    fake.files[u["data_url"]] = data
    fake.on_poll = lambda body: answer({"m.model": u} if body["topics"]["m.model"] is None else {})
    with Client(fake.url, cache_dir=tmp_path, long_poll=0.1) as c:
        sub = c.subscribe_file("m.model")
        path = sub.get()
        assert isinstance(path, Path) and path.read_bytes() == data and path.parent == tmp_path / "m.model"
    meta = json.loads((tmp_path / "m.model" / "meta.json").read_text())
    assert meta["version"] == 7 and meta["file"] == file_name(7, u["sha256"])
    # the server is down now: the cache is used at once
    with Client(dead_url(), cache_dir=tmp_path) as c:
        sub = c.subscribe_file("m.model", decoder=lambda p: p.read_bytes())
        assert sub.get() == data and sub.source is Source.CACHE and sub.version == 7


def test_a_corrupt_cache_is_not_used(tmp_path: Path) -> None:
    store = Store(tmp_path)
    p = store.write_payload("t.a", 1, hashlib.sha256(b"[1]").hexdigest(), b"[1]")
    store.commit(CacheMeta(topic="t.a", version=1, sha256=hashlib.sha256(b"[1]").hexdigest(), size=3, file=p.name))
    p.write_bytes(b"[2]")
    with Client(dead_url(), cache_dir=tmp_path) as c:
        assert c.subscribe_json("t.a", "d").source is Source.DEFAULT


def test_snapshot_when_unreachable_and_nothing_cached(tmp_path: Path) -> None:
    data = b'{"snap": true}'
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / "t.a.json").write_text(json.dumps({
        "format": 1, "topic": "t.a", "version": 4, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "content_type": "application/json", "metadata": {}, "published_at": "x", "written_at": "x",
        "data_base64": base64.b64encode(data).decode()}))
    (tmp_path / "objects").mkdir()
    with Client(dead_url(), snapshot_store=tmp_path.as_uri()) as c:
        sub = c.subscribe_json("t.a", None)
        assert sub.get() == {"snap": True} and sub.source is Source.SNAPSHOT and sub.version == 4
        assert c.subscribe_json("t.none", "d").source is Source.DEFAULT


def test_5xx_backs_off_and_retry_after_is_honoured(fake: Fake) -> None:
    fake.on_poll = lambda body: (503, {"error": {"code": "busy", "message": "busy"}}, {"Retry-After": "1"})
    with Client(fake.url, backoff=(0.01, 0.05)) as c:
        c.subscribe_json("t.a", None)
        time.sleep(1.5)
    assert 1 <= len(fake.polls) <= 3, "waits at least Retry-After between polls"


def test_4xx_retries_slowly(fake: Fake) -> None:
    fake.on_poll = lambda body: (401, {"error": {"code": "unauthorized", "message": "bad token"}}, {})
    with Client(fake.url, backoff=(0.01, 1.0)) as c:  # 4xx: every 2 x max
        c.subscribe_json("t.a", None)
        time.sleep(0.6)
        assert c.metrics.get("imprint_client_poll_errors_total", kind="client") == 1
    assert len(fake.polls) == 1


def test_a_new_subscription_abandons_the_open_long_poll(fake: Fake) -> None:
    release = threading.Event()

    def on_poll(body: Dict[str, Any]) -> Any:
        if body["wait_ms"] > 0:
            release.wait(10)
        return answer()

    fake.on_poll = on_poll
    with Client(fake.url, long_poll=30) as c:
        c.subscribe_json("t.a", None)
        eventually(lambda: any(p["wait_ms"] > 0 for p in fake.polls), what="a long poll")
        start = time.monotonic()
        c.subscribe_json("t.b", None)
        took = time.monotonic() - start
        release.set()
    assert took < 5
    assert any(set(p["topics"]) == {"t.a", "t.b"} for p in fake.polls)


def test_asyncio_wait_for_change(fake: Fake) -> None:
    offer = {"v": 1}
    fake.on_poll = lambda body: answer(
        {"t.a": update(offer["v"], json.dumps(offer).encode())} if body["topics"]["t.a"] != offer["v"] else {})

    async def main() -> None:
        from imprint import AsyncClient
        async with AsyncClient(fake.url, long_poll=0.1) as c:
            sub = await c.subscribe_json("t.a", None)
            assert sub.get() == {"v": 1}
            waiting = asyncio.ensure_future(sub.wait_for_change())
            await asyncio.sleep(0.05)
            offer["v"] = 2
            assert await asyncio.wait_for(waiting, 10) == {"v": 2}

    asyncio.run(main())


def test_close_sends_pending_reports_and_get_keeps_working(fake: Fake) -> None:
    fake.on_poll = lambda body: answer({"t.a": update(1, b"[1]")} if body["topics"]["t.a"] is None else {},
                                       after=60_000)
    c = Client(fake.url, long_poll=0)
    sub = c.subscribe_json("t.a", None)
    c.close()
    assert sub.get() == [1]
    assert any(p.get("applied", {}).get("t.a") == {"version": 1, "ok": True} for p in fake.polls)
    with pytest.raises(RuntimeError):
        c.subscribe_json("t.b", None)


def regions(u: Dict[str, Any], *urls: Any) -> Dict[str, Any]:
    """``u`` with ``data_urls`` for several regions: (region, url) pairs in order."""
    u["data_urls"] = [{"region": r, "url": url} for r, url in urls]
    u["data_url"] = u["data_urls"][0]["url"]
    return u


def test_failover_past_a_refused_connection_a_5xx_and_a_corrupt_copy(fake: Fake) -> None:
    data = b"the payload of several regions"
    base = "/api/v1/topics/t.a/versions/4/data?region="
    u = regions(update(4, data, inline=False), ("eu", dead_url() + base + "eu"), ("ap", base + "ap"),
                ("sa", base + "sa"), ("us", base + "us"))
    fake.statuses[base + "ap"] = 503
    fake.files[base + "sa"] = b"the payload of several regionZ"  # same size, another hash
    fake.files[base + "us"] = data
    fake.on_poll = lambda body: answer({"t.a": u} if body["topics"]["t.a"] is None else {})
    with Client(fake.url, long_poll=0.1, token="tok") as c:
        sub = c.subscribe_bytes("t.a", b"")
        assert sub.get() == data and sub.version == 4
        assert sub.served_region == "us" and sub.current().region == "us"
        reports = eventually(lambda: [p["applied"]["t.a"] for p in fake.polls if "t.a" in p.get("applied", {})],
                             what="the applied report")
        assert reports[0] == {"version": 4, "ok": True, "region": "us"}
        assert c.metrics.get("imprint_client_region_downloads_total", region="us") == 1
        assert c.metrics.get("imprint_client_region_failovers_total", region="eu") == 1
        assert c.metrics.get("imprint_client_region_failovers_total", region="sa") == 1
    asked = [r[1] for r in fake.requests if r[0] == "GET"]
    assert asked == [base + "ap", base + "sa", base + "us"], "each region once, in order"


def test_the_first_region_serves_when_it_works_and_a_single_url_has_no_region(fake: Fake) -> None:
    data, other = b"eu first", b"one region"
    base = "/api/v1/topics/t.a/versions/1/data?region="
    u = regions(update(1, data, inline=False), ("eu", base + "eu"), ("us", base + "us"))
    fake.files[base + "eu"] = data
    v = update(1, other, inline=False, topic="t.b")
    fake.files[v["data_url"]] = other
    fake.on_poll = lambda body: answer({t: x for t, x in (("t.a", u), ("t.b", v)) if body["topics"].get(t) is None})
    with Client(fake.url, long_poll=0.1) as c:
        a, b = c.subscribe_bytes("t.a", b""), c.subscribe_bytes("t.b", b"")
        assert a.get() == data and a.served_region == "eu"
        assert b.get() == other and b.served_region is None
    assert not [r for r in fake.requests if r[1] == base + "us"]


def test_every_region_corrupt_rejects_but_an_unreachable_one_is_transient(fake: Fake) -> None:
    data = b"payload"
    base = "/api/v1/topics/t.a/versions/2/data?region="
    bad = regions(update(2, data, inline=False, sha="0" * 64), ("eu", base + "eu"), ("us", base + "us"))
    fake.files[base + "eu"] = fake.files[base + "us"] = data
    fake.on_poll = lambda body: answer({"t.a": bad})
    with Client(fake.url, long_poll=0.1, startup_fallback=0) as c:
        sub = c.subscribe_bytes("t.a", b"default")
        failed = eventually(lambda: [p["applied"]["t.a"] for p in fake.polls
                                     if p.get("applied", {}).get("t.a", {}).get("ok") is False], what="a failure report")
        assert "checksum mismatch" in failed[0]["error"] and sub.get() == b"default"
    # eu is down, us corrupt: not the version's fault, so retried and never reported failed
    fake.polls.clear()
    down = regions(update(3, data, inline=False, sha="0" * 64), ("eu", dead_url() + base + "eu"), ("us", base + "us"))
    fake.on_poll = lambda body: answer({"t.a": down})
    with Client(fake.url, long_poll=0.1, startup_fallback=0, backoff=(0.05, 0.1)) as c:
        sub = c.subscribe_bytes("t.a", b"default")
        eventually(lambda: len([r for r in fake.requests if r[1] == base + "us"]) >= 4, what="retries")
        assert sub.get() == b"default"
    assert not any("t.a" in p.get("applied", {}) for p in fake.polls)
