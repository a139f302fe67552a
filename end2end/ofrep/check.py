"""The OpenFeature Python SDK with its OFREP provider, unchanged from PyPI, against Imprint:
evaluates one flag for each given context and compares value, reason, variant and the
`pinned` metadata with what is expected. Prints what it checked; exits 1 on a mismatch.

  check.py --url BASE_URL --token TOKEN --flag KEY --checks '[{"context": {...}, "expect": {...}}]'
"""
import argparse
import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--flag", required=True)
    p.add_argument("--checks", required=True)
    a = p.parse_args()
    api.set_provider(OFREPProvider(a.url, headers_factory=lambda: {"Authorization": f"Bearer {a.token}"}))
    client = api.get_client("imprint-e2e")
    failed = 0
    for check in json.loads(a.checks):
        ctx = dict(check["context"])
        key = ctx.pop("targetingKey", None)
        d = client.get_string_details(a.flag, "code-default", EvaluationContext(targeting_key=key, attributes=ctx))
        got = {
            "value": d.value,
            "reason": getattr(d.reason, "value", d.reason),
            "variant": d.variant,
            "pinned": (d.flag_metadata or {}).get("pinned"),
        }
        want = check["expect"]
        ok = all(got[k] == v for k, v in want.items()) and d.error_code is None
        failed += not ok
        print(json.dumps({"client": "python", "context": check["context"], "got": got,
                          "error": str(d.error_message) if d.error_code else None, "ok": ok}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
