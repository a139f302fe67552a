#!/usr/bin/env python3
"""Issue 22's client measurements for the Python client, against the real server binary
(started as the tests start it: IMPRINT_SERVER_BIN, IMPRINT_TEST_PG_URL, IMPRINT_TEST_PSQL;
pytest must be importable, the fixtures live in tests/conftest.py):

1. idle cost: one client subscribed to TOPICS topics (default 100), after a warm-up, the
   process's CPU time over IDLE_S seconds (default 60), and its RSS before the client was
   made and after;
2. propagation: ROUNDS publishes (default 30) to one of those topics, each timed from just
   before the publish request to the subscription's listener.

Prints one JSON object:  python clients/python/bench/idle_and_propagation.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import running_server  # noqa: E402

from imprint import Client  # noqa: E402

TOPICS = int(os.environ.get("TOPICS", 100))
IDLE_S = float(os.environ.get("IDLE_S", 60))
ROUNDS = int(os.environ.get("ROUNDS", 30))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list, p: float) -> float:
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main() -> None:
    with running_server() as server:
        topics = []
        for i in range(TOPICS):
            t = server.topic("bench")
            server.publish(t, {"topic": i, "v": 1})
            topics.append(t)
        rss_before = rss_mib()
        client = Client(server.url, instance="py-bench")
        subs = [client.subscribe_json(t, default=None) for t in topics]
        held = sum(1 for s in subs if s.version == 1)
        time.sleep(5)  # warm-up: the first long poll is open
        cpu0, t0 = time.process_time(), time.monotonic()
        time.sleep(IDLE_S)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        idle = {
            "topics": TOPICS,
            "held_at_start": held,
            "seconds": round(wall),
            "cpu_ms": round(cpu * 1000),
            "cpu_percent": round(cpu / wall * 100, 3),
            "rss_before_client_mib": round(rss_before, 1),
            "rss_mib": round(rss_mib(), 1),
            "threads": threading.active_count(),
        }
        changed = threading.Event()
        subs[0].on_change(lambda _v: changed.set())
        times = []
        for i in range(ROUNDS):
            changed.clear()
            start = time.monotonic()
            server.publish(topics[0], {"topic": 0, "v": i + 2})
            if not changed.wait(30):
                raise SystemExit(f"round {i}: no change within 30 s")
            times.append((time.monotonic() - start) * 1000)
            time.sleep(0.1)
        times.sort()
        client.close()
        print(json.dumps({
            "client": "python",
            "python": sys.version.split()[0],
            "idle": idle,
            "propagation": {
                "rounds": ROUNDS,
                "p50_ms": round(pct(times, 50), 1),
                "p90_ms": round(pct(times, 90), 1),
                "max_ms": round(times[-1], 1),
            },
        }, indent=2))


if __name__ == "__main__":
    main()
