"""The gRPC API from Python: stubs generated from the committed proto (run.sh), checks
against a running server. Prints one line per check and `grpc: N passed, M failed`."""
import argparse
import hashlib
import json
import random
import sys
import threading
import time
import urllib.request

import grpc
from imprint.v1 import imprint_pb2 as pb
from imprint.v1 import imprint_pb2_grpc as rpc


def http(base, token, method, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def error_code(err):
    return dict(err.trailing_metadata() or ()).get("imprint-error-code")


def check_watch(stub, base, token):
    topic = f"grpc.e2e.watch.{random.randrange(1 << 30)}"
    http(base, token, "POST", "/api/v1/topics", {"name": topic, "owner": "e2e"})
    http(base, token, "POST", f"/api/v1/topics/{topic}/versions", {"data": "v1"})
    start = pb.WatchRequest(start=pb.WatchStart(consumer=pb.Consumer(instance="py-e2e", labels={"region": "eu"}),
                                                topics={topic: 0}))
    reports = [start]
    stream = stub.Watch(iter(reports), timeout=30)
    first = next(stream)
    assert first.updates[topic].version == 1 and first.updates[topic].data == b"v1", first
    seen = {}

    def reader():
        for answer in stream:
            if topic in answer.updates:
                seen["at"] = time.monotonic()
                seen["version"] = answer.updates[topic].version
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.5)  # the Watch is parked on its long poll
    published = time.monotonic()
    http(base, token, "POST", f"/api/v1/topics/{topic}/versions", {"data": "v2"})
    t.join(timeout=5)
    stream.cancel()
    assert seen.get("version") == 2, f"the Watch did not see v2: {seen}"
    took = seen["at"] - published
    assert took < 1.0, f"the Watch saw the publish after {took:.3f} s"
    return f"Watch saw an HTTP publish {took * 1000:.0f} ms after it was sent"


def check_publish_download(stub, base, token):
    topic = f"grpc.e2e.data.{random.randrange(1 << 30)}"
    http(base, token, "POST", "/api/v1/topics", {"name": topic, "owner": "e2e"})
    payload = bytes(random.getrandbits(8) for _ in range(1 << 16)) * 48  # 3 MiB
    sha = hashlib.sha256(payload).hexdigest()
    meta = [("authorization", f"Bearer {token}")]

    def messages():
        yield pb.PublishRequest(header=pb.PublishHeader(topic=topic, sha256=sha, size=len(payload),
                                                        message="from python"))
        for i in range(0, len(payload), 1 << 20):
            yield pb.PublishRequest(chunk=payload[i:i + (1 << 20)])
        yield pb.PublishRequest(end=pb.PublishEnd())

    p = stub.Publish(messages(), metadata=meta, timeout=60)
    assert p.version == 1 and p.sha256 == sha and p.size == len(payload), p
    got, header = bytearray(), None
    for m in stub.Download(pb.DownloadRequest(topic=topic, version=1), metadata=meta, timeout=60):
        if m.HasField("header"):
            header = m.header
        else:
            got += m.chunk
    assert header is not None and header.sha256 == sha, header
    assert hashlib.sha256(got).hexdigest() == sha, "downloaded bytes differ"
    # A checksum mismatch stores nothing.
    def bad():
        yield pb.PublishRequest(header=pb.PublishHeader(topic=topic, sha256="0" * 64))
        yield pb.PublishRequest(chunk=b"not it")
        yield pb.PublishRequest(end=pb.PublishEnd())

    try:
        stub.Publish(bad(), metadata=meta, timeout=30)
        raise AssertionError("a checksum mismatch was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and error_code(e) == "checksum_mismatch", e
    versions = stub.ListVersions(pb.ListVersionsRequest(topic=topic), metadata=meta, timeout=10)
    assert [v.version for v in versions.versions] == [1], versions
    return f"Publish and Download of {len(payload) >> 20} MiB (sha256 checked), checksum mismatch refused"


def check_errors(stub, base, token):
    cases = [
        (lambda: stub.GetVersion(pb.GetVersionRequest(topic="grpc.e2e.none", version=1), timeout=10),
         grpc.StatusCode.NOT_FOUND, "topic_not_found"),
        (lambda: stub.GetVersion(pb.GetVersionRequest(topic="Bad Name", version=1), timeout=10),
         grpc.StatusCode.INVALID_ARGUMENT, "invalid_topic_name"),
        (lambda: stub.Publish(iter([pb.PublishRequest(header=pb.PublishHeader(topic="x", scopes=["=eu"]))]),
                              metadata=[("authorization", f"Bearer {token}")], timeout=10),
         grpc.StatusCode.INVALID_ARGUMENT, "invalid_selector"),
        (lambda: stub.Publish(iter([pb.PublishRequest(header=pb.PublishHeader(topic="x"))]),
                              metadata=[("authorization", "Bearer wrong")], timeout=10),
         grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
    ]
    for call, code, api_code in cases:
        try:
            call()
            raise AssertionError(f"expected {code}")
        except grpc.RpcError as e:
            assert (e.code(), error_code(e)) == (code, api_code), (e.code(), error_code(e), e.details())
    # An oversized message (over 4 MiB) is refused by the transport.
    try:
        stub.Poll(pb.PollRequest(consumer=pb.Consumer(instance="x" * (5 << 20))), timeout=10)
        raise AssertionError("an oversized message was accepted")
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE), e
    return "unknown topic, bad name, bad selector, bad token, oversized message: the right status and code"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--token", required=True)
    a = ap.parse_args()
    channel = grpc.insecure_channel(a.grpc, options=[("grpc.max_send_message_length", 8 << 20)])
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = rpc.ImprintStub(channel)
    passed = failed = 0
    for check in (check_watch, check_publish_download, check_errors):
        try:
            print(f"grpc e2e ({check.__name__}): ok: {check(stub, a.base, a.token)}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure
            print(f"grpc e2e ({check.__name__}): FAILED: {e!r}", file=sys.stderr)
            failed += 1
    print(f"grpc: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
