#!/usr/bin/env python3
"""Downstream consumers for bench/relay.sh: N long-polling consumers on each relay URL
(raw HTTP/1.1 over asyncio, one keep-alive connection each, no dependencies), a publisher,
and the figures: propagation from each publish's answer to each consumer's answer, per hop
(p50, p99, max), and the requests the first relay sent upstream per downstream consumer.

    relay_driver.py --server URL --token ADMIN --topic T --relay URL1 --relay URL2 \
        [--consumers 1000] [--publishes 20] [--interval 1.0]
"""
import argparse
import asyncio
import json
import time
import urllib.parse
import urllib.request

LABEL_SETS = [{"region": "eu"}, {"region": "us"}, {"region": "ap"}, {"region": "sa", "tier": "edge"}]


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port
        self.reader = self.writer = None

    async def request(self, method, path, body=None, timeout=90):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() == "content-length":
                length = int(v.strip())
        payload = await asyncio.wait_for(self.reader.readexactly(length), timeout) if length else b""
        return status, (json.loads(payload) if payload else None)


def http_json(method, url, token=None, body=None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


async def consumer(url, i, hop, topic, seen, stop):
    conn = Conn(url)
    held = None
    labels = LABEL_SETS[i % len(LABEL_SETS)]
    while not stop.is_set():
        body = {"consumer": {"instance": f"bench-h{hop}-{i:05}", "labels": labels},
                "topics": {topic: held}, "wait_ms": 30000}
        try:
            status, answer = await conn.request("POST", "/api/v1/poll", body)
        except Exception:  # noqa: BLE001 - a dropped connection is retried
            conn = Conn(url)
            await asyncio.sleep(0.5)
            continue
        now = time.monotonic()
        if status != 200:
            await asyncio.sleep(1)
            continue
        u = answer.get("updates", {}).get(topic)
        if u:
            held = u["version"]
            seen.setdefault((hop, held), []).append(now)
        await asyncio.sleep(answer.get("poll_after_ms", 0) / 1000)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--relay", action="append", required=True)
    ap.add_argument("--consumers", type=int, default=1000)
    ap.add_argument("--publishes", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()

    def status(url):
        return http_json("GET", url + "/relay/status")

    def publish(n):
        return http_json("POST", f"{a.server}/api/v1/topics/{a.topic}/versions", a.token, {"data": f"v{n}"})["version"]

    first = publish(0)
    seen, stop = {}, asyncio.Event()
    tasks = [asyncio.create_task(consumer(url, i, hop + 1, a.topic, seen, stop))
             for hop, url in enumerate(a.relay) for i in range(a.consumers)]
    # Everyone holds the first version and is parked before anything is measured.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(len(seen.get((h + 1, first), [])) >= a.consumers for h in range(len(a.relay))):
            if all(status(u)["parked"] >= a.consumers for u in a.relay):
                break
        await asyncio.sleep(0.2)
    else:
        raise SystemExit("the consumers did not all get the first version and park within 120 s")
    await asyncio.sleep(1)
    before = [status(u) for u in a.relay]
    published = {}
    for n in range(1, a.publishes + 1):
        v = publish(n)
        published[v] = time.monotonic()  # the publish's answer: the version is committed
        await asyncio.sleep(a.interval)
    await asyncio.sleep(max(5.0, a.interval))
    after = [status(u) for u in a.relay]
    stop.set()
    for t in tasks:
        t.cancel()

    print(f"{a.consumers} long-polling consumers per relay, {len(LABEL_SETS)} label sets, "
          f"{a.publishes} publishes {a.interval:g} s apart")
    print()
    print("| path | answers | p50 | p99 | max | missed |")
    print("|---|---|---|---|---|---|")
    for hop in range(1, len(a.relay) + 1):
        lat, missed = [], 0
        for v, at in published.items():
            got = seen.get((hop, v), [])
            missed += max(0, a.consumers - len(got))
            lat += [(g - at) * 1000 for g in got]
        name = "server → relay → consumer" if hop == 1 else "server → relay → relay → consumer"
        print(f"| {name} | {len(lat)} | {pct(lat, 50):.0f} ms | {pct(lat, 99):.0f} ms | {max(lat):.0f} ms | {missed} |")
    print()
    d = lambda k, i=0: after[i][k] - before[i][k]  # noqa: E731
    upstream = d("upstream_polls") + d("report_batches") + d("downloads")
    downstream = d("downstream_polls")
    print(f"relay 1 sent upstream {d('upstream_polls')} relay polls + {d('report_batches')} report batches "
          f"+ {d('downloads')} downloads = {upstream} requests while answering {downstream} downstream polls "
          f"of {a.consumers} consumers (+ relay 2's {d('upstream_polls', 1)} polls): "
          f"{upstream / a.consumers:.3f} upstream requests per downstream consumer over {a.publishes} publishes "
          f"({upstream / a.consumers / a.publishes:.4f} per consumer per publish; polling the server directly: "
          f"≥ 1 per consumer per publish, plus the long polls' renewals)")


if __name__ == "__main__":
    asyncio.run(main())
