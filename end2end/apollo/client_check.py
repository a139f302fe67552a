#!/usr/bin/env python3
"""Check an Apollo-compatible config service with the unmodified PyPI client
`apollo-client-python==0.2.5` (import name `apollo`).

  client_check.py --url http://127.0.0.1:PORT/apollo --app-id APP --cluster default \
      --namespace application --key K --expect V [--secret S] [--then-expect V2 --timeout 30]

1. Constructs apollo.ApolloClient (its constructor does GET {url}/configs/{app}/{cluster}/{ns}),
   reads K with get_value(K, namespace=NS) and compares it with V.
2. With --then-expect: starts the library's own long-poll thread (GET {url}/notifications/v2),
   waits until the value becomes V2 (seen via its change listener / cache) or --timeout elapses.
Prints exactly one JSON line on stdout. Exit 0 = all checks passed, 1 = check failed, 2 = usage.
Use the namespace name WITHOUT a ".properties" suffix with --then-expect: Apollo answers
/notifications/v2 with the suffix-stripped name and this library then tracks that as a different
namespace, so a change would never reach the one being checked.
The library's disk cache (~/data/apollo/cache) is redirected to a fresh temp dir via $HOME so a
stale cache can never satisfy the check; the temp dir is removed at exit.
"""
import argparse
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time


class _Capture(logging.Handler):
    """Keep the library's log lines (it logs with bad %-args at times; never raise)."""

    def __init__(self, echo):
        super().__init__(logging.DEBUG)
        self.lines, self.echo = [], echo

    def emit(self, record):
        try:
            msg = record.getMessage()
        except Exception:
            msg = "%s %r" % (record.msg, record.args)
        line = "%s %s" % (record.levelname, msg)
        self.lines.append(line)
        if self.echo:
            sys.stderr.write("apollo-lib: " + line + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="config service base URL, e.g. http://127.0.0.1:8080/apollo")
    p.add_argument("--app-id", required=True)
    p.add_argument("--cluster", default="default")
    p.add_argument("--namespace", default="application")
    p.add_argument("--key", required=True)
    p.add_argument("--expect", required=True)
    p.add_argument("--secret", default="")
    p.add_argument("--then-expect", default=None)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for --then-expect")
    p.add_argument("--verbose", action="store_true", help="echo library log lines to stderr")
    a = p.parse_args(argv)

    out = {"ok": False, "url": a.url, "app_id": a.app_id, "cluster": a.cluster,
           "namespace": a.namespace, "key": a.key, "expect": a.expect, "signed": bool(a.secret)}
    t0 = time.monotonic()

    # Library writes its cache under os.path.expanduser("~") + "/data/apollo/cache/": use a temp HOME.
    tmp_home = tempfile.mkdtemp(prefix="apollo-check-")
    os.environ["HOME"] = tmp_home
    # Keep APOLLO_* env vars from overriding/complementing our explicit arguments.
    for var in ("APOLLO_META_SERVER_ADDRESS", "APOLLO_APP_ID", "APOLLO_CLUSTER",
                "APOLLO_NAMESPACES", "APOLLO_APP_SECRET"):
        os.environ.pop(var, None)

    cap = _Capture(a.verbose)
    root = logging.getLogger()
    root.handlers[:] = [cap]
    root.setLevel(logging.DEBUG)

    import apollo.apollo_client as lib  # apollo-client-python

    # The library's init_ip() does a UDP connect() to 8.8.8.8:53 (sends no packet) to learn the
    # local IP for the `ip` query param, and raises if there is no route. Only then fall back.
    try:
        out["client_ip"] = lib.init_ip()
    except OSError:
        lib.init_ip = lambda: "127.0.0.1"
        out["client_ip"] = "127.0.0.1 (fallback: no default route)"

    client = None
    code = 1
    try:
        client = lib.ApolloClient(
            config_url=a.url.rstrip("/"),
            app_id=a.app_id,
            cluster=a.cluster,
            namespaces=[a.namespace],
            secret=a.secret,                 # "" => no Authorization/Timestamp headers
            enable_scheduled_updates=False,  # no 10-minute re-fetch thread
            enable_long_pool_updates=True,   # (sic) long polling on /notifications/v2
            auto_update_enabled=False,       # start threads later, only if needed
            enable_dotenv=False,             # don't read ./.env
        )
        changed = threading.Event()
        events = []

        def on_change(ev):
            if ev.get("key") == a.key and ev.get("namespace") == a.namespace:
                events.append({k: ev.get(k) for k in ("action", "old_value", "value")})
                changed.set()

        client.add_value_change_listener(on_change)

        got = client.get_value(a.key, namespace=a.namespace)
        out["initial"] = got
        out["release_key"] = (client._cache.get(a.namespace) or {}).get("releaseKey")
        if got != a.expect:
            out["error"] = "initial value mismatch: expected %r, got %r" % (a.expect, got)
            return code
        if a.then_expect is None:
            out["ok"], code = True, 0
            return code

        out["then_expect"] = a.then_expect
        client.start()  # daemon thread: loop { GET /notifications/v2 (75 s timeout); sleep 2 s }
        deadline = time.monotonic() + a.timeout
        cur = got
        while True:
            cur = client.get_value(a.key, namespace=a.namespace)
            if cur == a.then_expect:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            changed.wait(min(left, 0.5))
            changed.clear()
        out["final"] = cur
        out["changes"] = events
        out["release_key_final"] = (client._cache.get(a.namespace) or {}).get("releaseKey")
        if cur != a.then_expect:
            out["error"] = "timed out after %.1fs waiting for %r, last value %r" % (a.timeout, a.then_expect, cur)
            return code
        out["ok"], code = True, 0
        return code
    except Exception as e:  # pragma: no cover - defensive
        out["error"] = "%s: %s" % (type(e).__name__, e)
        return code
    finally:
        if client is not None:
            client.stop()  # sets a flag; the daemon long-poll thread may still sit in urlopen()
        out["elapsed_s"] = round(time.monotonic() - t0, 3)
        errs = [l for l in cap.lines if l.startswith(("ERROR", "WARNING"))]
        if errs:
            out["lib_errors"] = errs[-5:]
        print(json.dumps(out, ensure_ascii=False), flush=True)
        shutil.rmtree(tmp_home, ignore_errors=True)


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Daemon threads of the library may be blocked in a 75 s read; don't wait for them.
    os._exit(rc)
