"""A webhook receiver as a user would write one: every delivery is verified with the
Standard Webhooks library (`standardwebhooks`, PyPI) and parsed with the CloudEvents SDK
(`cloudevents`, PyPI); nothing here knows how Imprint signs or encodes.

  receiver.py serve --port N --secret whsec_… --log FILE --down-flag FILE
      answers 503 while FILE exists (the receiver is "down"), else verifies, parses and
      appends the event to the log (one JSON line each), answering 204; a delivery that
      does not verify is logged as such and answered 400.
  receiver.py check --log FILE --expect TYPE… [--timeout S]
      waits until the log holds as many events as expected, then checks that they are
      exactly the expected types in that order, all verified, ids unique.
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

MAX_BODY = 1 << 20


def serve(args):
    hook = Webhook(args.secret)
    log = Path(args.log)
    down = Path(args.down_flag)
    lock = threading.Lock()

    def write(entry):
        with lock, log.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            if down.exists():
                write({"refused": True})
                self.send_response(503)
                self.end_headers()
                return
            headers = dict(self.headers.items())
            try:
                hook.verify(body, headers)
            except WebhookVerificationError as e:
                write({"verified": False, "error": str(e)})
                self.send_response(400)
                self.end_headers()
                return
            event = from_http_event(HTTPMessage(headers=headers, body=body))
            write({
                "verified": True,
                "webhook_id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                "id": event.get_id(),
                "type": event.get_type(),
                "source": event.get_source(),
                "subject": event.get_subject(),
                "specversion": event.get_specversion(),
                "time": event.get_time().isoformat() if event.get_time() else None,
                "data": event.get_data(),
            })
            self.send_response(204)
            self.end_headers()

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ready")

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


def check(args):
    deadline = time.time() + args.timeout
    entries = []
    while time.time() < deadline:
        lines = Path(args.log).read_text().splitlines() if Path(args.log).exists() else []
        entries = [json.loads(line) for line in lines]
        events = [e for e in entries if e.get("verified")]
        if len(events) >= len(args.expect) or any(e.get("verified") is False for e in entries):
            break
        time.sleep(0.2)
    bad = [e for e in entries if e.get("verified") is False]
    events = [e for e in entries if e.get("verified")]
    refused = sum(1 for e in entries if e.get("refused"))
    got = [e["type"] for e in events]
    want = [f"io.imprint.{t}" for t in args.expect]
    problems = []
    if bad:
        problems.append(f"{len(bad)} deliveries did not verify: {bad[:3]}")
    if got != want:
        problems.append(f"types in order:\n  got  {got}\n  want {want}")
    if len({e["id"] for e in events}) != len(events):
        problems.append("an event arrived twice")
    for e in events:
        if e["id"] != e["webhook_id"] or e["specversion"] != "1.0" or not e["time"]:
            problems.append(f"attributes: {e}")
    if args.min_refused and refused < args.min_refused:
        problems.append(f"the receiver was down but refused only {refused} deliveries")
    if problems:
        print("webhooks e2e: FAILED\n" + "\n".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"webhooks e2e: {len(events)} events verified (standardwebhooks) and parsed (cloudevents), "
          f"in order; {refused} refused while down, redelivered after")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--secret", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--down-flag", required=True)
    c = sub.add_parser("check")
    c.add_argument("--log", required=True)
    c.add_argument("--expect", nargs="+", required=True)
    c.add_argument("--timeout", type=float, default=90)
    c.add_argument("--min-refused", type=int, default=0)
    args = p.parse_args()
    serve(args) if args.cmd == "serve" else check(args)


if __name__ == "__main__":
    main()
