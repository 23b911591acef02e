"""The retry seam: what is retried (connect errors, timeouts, 429, 5xx), how long it waits, and
what is not retried (other 4xx). No real sleeps: ``sleep`` records the delays."""

from __future__ import annotations

import gzip
import json
import random
import threading
import time

import httpx
import pytest

from probe.client.transport import Backoff, PermanentError, Transport, TransientError


def _transport(responses: list, **kwargs) -> tuple[Transport, list[float], list[httpx.Request]]:
    sleeps: list[float] = []
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = responses.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = httpx.Client(transport=httpx.MockTransport(handler))
    transport = Transport(
        "http://srv/api/v1", "tok", client=client, sleep=sleeps.append, rng=random.Random(0),
        backoff=Backoff(base=1.0, maximum=8.0), **kwargs,
    )
    return transport, sleeps, seen


def test_5xx_is_retried_with_growing_jittered_backoff() -> None:
    responses = [httpx.Response(503), httpx.Response(502), httpx.Response(500), httpx.Response(200, json={"ok": 1})]
    transport, sleeps, seen = _transport(responses, max_attempts=4)
    assert transport.request("POST", "/runs", {"id": "a"}) == {"ok": 1}
    assert len(seen) == 4
    # equal jitter: attempt k waits in [2^k/2, 2^k] seconds (base 1)
    for k, delay in enumerate(sleeps):
        assert 2**k / 2 <= delay <= 2**k
    assert sleeps[0] < sleeps[1] < sleeps[2]


def test_connect_errors_and_timeouts_give_transient_error_after_last_attempt() -> None:
    request = httpx.Request("POST", "http://srv")
    responses = [httpx.ConnectError("refused", request=request), httpx.ReadTimeout("slow", request=request)]
    transport, sleeps, seen = _transport(responses, max_attempts=2)
    with pytest.raises(TransientError, match="ReadTimeout"):
        transport.request("POST", "/runs", {})
    assert len(seen) == 2 and len(sleeps) == 1


def test_429_honours_retry_after() -> None:
    responses = [httpx.Response(429, headers={"Retry-After": "5"}), httpx.Response(200, json={})]
    transport, sleeps, _ = _transport(responses, max_attempts=3)
    transport.request("POST", "/runs/x/batches", {"batch_id": "x:1"})
    assert sleeps == [5.0]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_other_4xx_is_not_retried_and_carries_the_detail(status: int) -> None:
    responses = [httpx.Response(status, json={"detail": [{"loc": ["body", "scalars", 0, "key"]}]})]
    transport, sleeps, seen = _transport(responses, max_attempts=5)
    with pytest.raises(PermanentError) as info:
        transport.request("POST", "/runs/x/batches", {"batch_id": "x:1"})
    assert info.value.status == status and "scalars" in str(info.value)
    assert len(seen) == 1 and sleeps == []


def test_large_bodies_are_gzipped_and_token_is_sent() -> None:
    transport, _, seen = _transport([httpx.Response(200, json={}), httpx.Response(200, json={})])
    transport.request("POST", "/runs/x/batches", {"values": list(range(2000))})
    transport.request("POST", "/runs/x/heartbeat", None)
    big, small = seen
    assert big.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(big.content))["values"][-1] == 1999
    assert "content-encoding" not in small.headers
    assert big.headers["authorization"] == "Bearer tok"
    assert str(big.url) == "http://srv/api/v1/runs/x/batches"


@pytest.mark.parametrize(("api", "compressed"), [
    ("http://127.0.0.1:8000/api/v1", False), ("http://localhost:8000/api/v1", False),
    ("http://127.3.2.1/api/v1", False), ("http://[::1]:8000/api/v1", False),
    ("http://srv/api/v1", True), ("https://optiscope.example.com/api/v1", True), ("http://10.0.0.5:8000/api/v1", True),
])
def test_loopback_bodies_are_sent_plain(api: str, compressed: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    transport = Transport(api, "tok", client=httpx.Client(transport=httpx.MockTransport(handler)))
    transport.request("POST", "/runs/x/batches", {"values": list(range(2000))})
    assert (seen[0].headers.get("content-encoding") == "gzip") is compressed
    body = gzip.decompress(seen[0].content) if compressed else seen[0].content
    assert json.loads(body)["values"][-1] == 1999
    forced = Transport(api, "tok", client=httpx.Client(transport=httpx.MockTransport(handler)), compress=True)
    forced.request("POST", "/runs/x/batches", {"values": list(range(2000))})
    assert seen[1].headers["content-encoding"] == "gzip"


def test_backoff_is_capped() -> None:
    rng = random.Random(1)
    assert all(Backoff(base=1.0, maximum=8.0).delay(k, rng) <= 8.0 for k in range(100))


def test_a_cancelled_call_makes_no_further_try_and_does_not_wait() -> None:
    # the run is being terminated: the 2nd and 3rd tries and their backoff would outlast its time
    cancel = threading.Event()
    responses = [httpx.Response(503), httpx.Response(503), httpx.Response(200, json={})]
    transport, sleeps, seen = _transport(responses, max_attempts=3)
    cancel.set()
    t0 = time.monotonic()
    with pytest.raises(TransientError, match="503"):
        transport.request("POST", "/runs", {}, cancel=cancel)
    assert len(seen) == 1 and sleeps == [] and time.monotonic() - t0 < 0.5


def test_cancelling_during_the_backoff_ends_the_wait_at_once() -> None:
    cancel = threading.Event()
    responses = [httpx.Response(503), httpx.Response(200, json={})]
    transport, _, seen = _transport(responses, max_attempts=2)  # backoff base 1 s: the wait is >= 0.5 s
    threading.Timer(0.05, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(TransientError):
        transport.request("POST", "/runs", {}, cancel=cancel)
    assert len(seen) == 1 and time.monotonic() - t0 < 0.4


def test_a_per_call_timeout_reaches_the_http_client() -> None:
    transport, _, seen = _transport([httpx.Response(200, json={}), httpx.Response(200, json={})])
    transport.request("POST", "/runs", {}, timeout=1.5)
    transport.request("POST", "/runs", {})
    assert seen[0].extensions["timeout"]["read"] == 1.5
    assert seen[1].extensions["timeout"]["read"] == 5.0  # the client's own (httpx's default)
