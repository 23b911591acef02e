"""The sender's device-to-host copies are ordered after the stream that produced a logged CUDA tensor
(issue #22): an event recorded at ``log()`` time, waited on by the sender before it copies."""

from __future__ import annotations

import pytest
import torch

import probe
from probe.client.config import ClientConfig
from probe.client.sender import CudaOrder

from .conftest import FakeServer


def test_cpu_values_record_no_events_and_wait_is_a_no_op() -> None:
    order = CudaOrder()
    order.note([torch.tensor(1.0), 2.0, 3, torch.ones(3)])
    assert len(order._marks) == 0
    order.wait()


def test_cpu_tensors_still_arrive(fake_server: FakeServer, fast_settings: ClientConfig) -> None:
    run = probe.init("proj", settings=fast_settings, client=fake_server.client())
    run.log({"loss": torch.tensor(0.5)}, step=0)
    run.log_array("sv.w", torch.tensor([2.0, 1.0]), step=0, layer="w")
    assert run.flush(timeout=10)
    run.finish()
    assert [v for _, k, _, v in fake_server.points if k == "loss"] == [0.5]
    assert fake_server.arrays[0]["values"] == [2.0, 1.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_value_from_a_side_stream_is_read_after_it_is_written(
    fake_server: FakeServer, fast_settings: ClientConfig
) -> None:
    run = probe.init("proj", settings=fast_settings, client=fake_server.client())
    side = torch.cuda.Stream()
    x = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        out = torch.zeros((), device="cuda")
        y = x
        for _ in range(50):  # long enough that an unordered copy would read the zero
            y = (y @ x) / 2048.0
        out.copy_(y.abs().sum() * 0 + 7.0)
        run.log({"v": out}, step=0)
    assert run.flush(timeout=30)
    run.finish()
    assert [v for _, k, _, v in fake_server.points if k == "v"] == [7.0]
