#!/usr/bin/env python3
"""Check Imprint's Spring Cloud Config endpoint with the unmodified PyPI client
`config-client==1.5.0` (import name `config`).

  client_check.py --url http://127.0.0.1:PORT/spring --app APP --token TOKEN \
      --expect dev:greeting=hello --expect dev:server.port=8080 --expect prod:greeting=hola \
      --then-expect dev:greeting=hi --timeout 30

1. For each --expect PROFILE:KEY=VALUE: a ConfigClient(address=URL, app_name=APP,
   profile=PROFILE, label="main") fetches with get_config(auth=("imprint", TOKEN)) (the
   token as the Basic password, as Spring clients send it) and KEY must read VALUE.
2. With --then-expect: prints "ready" on stderr, then the same client fetches again
   (get_config) every half second until KEY reads VALUE or --timeout passes.
Prints one JSON line on stdout. Exit 0 = all checks passed, 1 = a check failed.
"""
import argparse
import json
import sys
import time

from config import ConfigClient


def parse(spec):
    profile, _, rest = spec.partition(":")
    key, _, value = rest.partition("=")
    return profile, key, value


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--expect", action="append", default=[])
    p.add_argument("--then-expect", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    auth = {"auth": ("imprint", a.token)} if a.token else {}
    clients = {}

    def client(profile):
        if profile not in clients:
            clients[profile] = ConfigClient(address=a.url, app_name=a.app, profile=profile, label="main", fail_fast=False)
        return clients[profile]

    seen = {}
    for spec in a.expect:
        profile, key, want = parse(spec)
        c = client(profile)
        c.get_config(**auth)
        got = c.get(key)
        seen[spec] = got
        if str(got) != want:
            print(json.dumps({"ok": False, "check": spec, "got": got, "config": c.config}))
            return 1
    if a.then_expect:
        profile, key, want = parse(a.then_expect)
        c = client(profile)
        print("ready", file=sys.stderr, flush=True)
        deadline = time.monotonic() + a.timeout
        got = None
        while time.monotonic() < deadline:
            c.get_config(**auth)
            got = c.get(key)
            if str(got) == want:
                break
            time.sleep(0.5)
        seen[a.then_expect] = got
        if str(got) != want:
            print(json.dumps({"ok": False, "check": a.then_expect, "got": got}))
            return 1
    print(json.dumps({"ok": True, "seen": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
