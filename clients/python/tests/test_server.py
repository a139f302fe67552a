"""The client against a real Imprint server (the binary, a fresh database): values,
updates reaching listeners, pins and unpins, scoped releases, a failed version reported
in the consumer audit, the start-up fallback to an older version, large payloads
streamed to a file, and the server's own object-store snapshot."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any, Dict, List, Optional

from conftest import Server, dead_url, eventually

from imprint import AsyncClient, Client, Source


def instance() -> str:
    return "py-" + secrets.token_hex(4)


def consumer(server: Server, topic: str, name: str) -> Optional[Dict[str, Any]]:
    return next((c for c in server.consumers(topic) if c["instance"] == name), None)


def test_first_value_then_updates_reach_the_listener(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, {"n": 1})
    seen: List[Any] = []
    with Client(server.url, instance=instance()) as c:
        sub = c.subscribe_json(topic, None)
        assert sub.get() == {"n": 1} and sub.version == 1 and sub.source is Source.SERVER
        sub.on_change(seen.append)
        server.publish(topic, {"n": 2})
        eventually(lambda: sub.version == 2, what="the update")
        assert sub.get() == {"n": 2} and seen == [{"n": 2}]


def test_the_default_while_the_topic_is_missing_then_its_first_version(server: Server) -> None:
    with Client(server.url, instance=instance(), long_poll=1) as c:
        sub = c.subscribe_json("t.not-yet-" + secrets.token_hex(3), "default")
        assert sub.get() == "default" and sub.source is Source.DEFAULT
        topic = server.topic()
        later = c.subscribe_json(topic, "d")
        assert later.get() == "d"
        server.publish(topic, [1])
        eventually(lambda: later.get() == [1], what="the first version")


def test_pin_moves_back_and_unpin_moves_forward(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, "v1")
    server.publish(topic, "v2")
    with Client(server.url, instance=instance()) as c:
        sub = c.subscribe(topic, "", lambda b: b.decode())
        assert sub.get() == "v2"
        server.pin(topic, 1)
        eventually(lambda: sub.version == 1, what="the pin")
        assert sub.get() == "v1" and sub.current().pinned
        server.unpin(topic)
        eventually(lambda: sub.version == 2, what="the unpin")


def test_a_scoped_release_reaches_only_matching_labels(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, "all")
    server.publish(topic, "eu only", scopes=[{"region": "eu"}])
    with Client(server.url, instance=instance(), labels={"region": "eu"}) as eu, \
            Client(server.url, instance=instance(), labels={"region": "us"}) as us:
        assert eu.subscribe_bytes(topic).get() == b"eu only"
        assert us.subscribe_bytes(topic).get() == b"all"


def test_a_bad_version_keeps_the_old_value_and_is_reported_failed(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, {"ok": 1})
    name = instance()
    with Client(server.url, instance=name, recheck_rejected=0.5) as c:
        sub = c.subscribe_json(topic, None)
        server.publish(topic, "{not json")
        row = eventually(lambda: (r := consumer(server, topic, name)) and r.get("last_applied_ok") is False and r,
                         what="the failure in the consumer audit")
        assert row["last_applied_version"] == 2 and "decode failed" in row["last_error"]
        assert row["version"] == 1, "what the node serves, not what it failed"
        assert sub.get() == {"ok": 1}
        server.publish(topic, {"ok": 3})  # a fix is picked up by the re-check
        eventually(lambda: sub.version == 3, what="the fix")
        eventually(lambda: (r := consumer(server, topic, name)) and r.get("last_applied_ok") is True
                   and r["version"] == 3, what="the success in the audit")


def test_start_up_falls_back_to_an_older_version(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, {"good": 1})
    server.publish(topic, "broken")
    with Client(server.url, instance=instance()) as c:
        sub = c.subscribe_json(topic, None)
        assert sub.get() == {"good": 1} and sub.version == 1 and sub.source is Source.SERVER


def test_large_payloads_stream_to_a_file_and_the_cache_outlives_the_server(server: Server, tmp_path: Path) -> None:
    topic = server.topic("m")
    data = secrets.token_bytes(3 << 20)  # beyond the inline limit: downloaded via data_url
    server.publish_raw(topic, data)
    with Client(server.url, instance=instance(), cache_dir=tmp_path) as c:
        path = c.subscribe_file(topic).get()
        assert isinstance(path, Path) and path.read_bytes() == data
    with Client(dead_url(), cache_dir=tmp_path) as c:
        sub = c.subscribe_file(topic, decoder=lambda p: p.read_bytes())
        assert sub.source is Source.CACHE and sub.get() == data


def test_the_servers_snapshot_when_it_is_unreachable(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, {"from": "snapshot"})
    manifest = server.objects / "snapshots" / f"{topic}.json"
    eventually(lambda: manifest.exists() and json.loads(manifest.read_text())["version"] == 1,
               what="the snapshot written by the server's worker")
    with Client(dead_url(), snapshot_store=server.objects.as_uri()) as c:
        sub = c.subscribe_json(topic, None)
        assert sub.get() == {"from": "snapshot"} and sub.source is Source.SNAPSHOT and sub.version == 1


def test_asyncio_follows_changes(server: Server) -> None:
    topic = server.topic()
    server.publish(topic, 1)

    async def main() -> None:
        async with AsyncClient(server.url, instance=instance()) as c:
            sub = await c.subscribe_json(topic, 0)
            assert sub.get() == 1
            changes = sub.changes()
            nxt = asyncio.ensure_future(changes.__anext__())
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.publish, topic, 2)
            assert await asyncio.wait_for(nxt, 20) == 2

    asyncio.run(main())
