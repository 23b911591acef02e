"""The durable spool: order, resumption, the disk budget, torn writes, one owner at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe.client import protocol
from probe.client.spool import RunSpool, SpoolBusy, spooled_runs

CREATE: protocol.RunCreate = {"id": "r1", "project": "p", "name": "n", "config": {}, "tags": [], "world_size": 1}


def _batch(seq: int, points: int = 3) -> protocol.Batch:
    return {
        "batch_id": f"r1:{seq}",
        "scalars": [{"key": "loss", "steps": list(range(points)), "times": [0.0] * points, "values": [1.0] * points}],
        "arrays": [],
        "events": [],
    }


def test_replay_returns_batches_in_order_and_deletes_them(tmp_path: Path) -> None:
    spool = RunSpool.create(tmp_path, "r1", CREATE, segment_bytes=300)
    for seq in range(10):
        spool.append(_batch(seq))
    assert spool.pending_batches == 10 and len(list(spool.directory.glob("*.jsonl"))) > 1
    sent: list[str] = []
    assert spool.replay(lambda b: sent.append(b["batch_id"])) == 10
    assert sent == [f"r1:{i}" for i in range(10)]
    assert not spool and not list(spool.directory.glob("*.jsonl"))
    spool.append(_batch(10))  # writing continues after the active segment was consumed
    assert spool.replay(lambda b: sent.append(b["batch_id"])) == 1 and sent[-1] == "r1:10"


def test_failed_send_keeps_the_batch_first_in_line(tmp_path: Path) -> None:
    spool = RunSpool.create(tmp_path, "r1", CREATE, segment_bytes=300)
    for seq in range(6):
        spool.append(_batch(seq))
    sent: list[str] = []

    def flaky(batch: protocol.Batch) -> None:
        if batch["batch_id"] == "r1:3" and "r1:3" not in failed:
            failed.append("r1:3")
            raise ConnectionError("down")
        sent.append(batch["batch_id"])

    failed: list[str] = []
    with pytest.raises(ConnectionError):
        spool.replay(flaky)
    assert spool.replay(flaky) == 3
    assert sent == [f"r1:{i}" for i in range(6)]


def test_replay_limit_resumes_where_it_stopped(tmp_path: Path) -> None:
    spool = RunSpool.create(tmp_path, "r1", CREATE)
    for seq in range(5):
        spool.append(_batch(seq))
    sent: list[str] = []
    assert spool.replay(lambda b: sent.append(b["batch_id"]), max_batches=2) == 2
    assert spool.replay(lambda b: sent.append(b["batch_id"])) == 3
    assert sent == [f"r1:{i}" for i in range(5)]


def test_size_limit_drops_oldest_and_counts_records(tmp_path: Path) -> None:
    line = len(protocol.dumps(_batch(0))) + 1
    spool = RunSpool.create(tmp_path, "r1", CREATE, max_bytes=8 * line, segment_bytes=2 * line)
    for seq in range(20):
        spool.append(_batch(seq))
    assert spool.bytes <= 8 * line
    sent: list[str] = []
    spool.replay(lambda b: sent.append(b["batch_id"]))
    assert sent == [f"r1:{i}" for i in range(20 - len(sent), 20)]  # the newest survive, in order
    assert spool.dropped_batches == 20 - len(sent)
    assert spool.dropped_records == 3 * spool.dropped_batches


@pytest.mark.parametrize("reopened", [False, True])
def test_size_limit_counts_only_the_undelivered_part_of_a_partly_replayed_segment(
    tmp_path: Path, reopened: bool
) -> None:
    line = len(protocol.dumps(_batch(0))) + 1
    spool = RunSpool.create(tmp_path, "r1", CREATE, max_bytes=16 * line, segment_bytes=4 * line)
    for seq in range(4):  # one full segment
        spool.append(_batch(seq))
    if reopened:  # segments found on disk (a restarted process): their record counts are unknown
        spool.release()
        spool = RunSpool.open(spool.directory, max_bytes=16 * line, segment_bytes=4 * line)
    sent: list[str] = []
    spool.replay(lambda b: sent.append(b["batch_id"]), max_batches=3)  # the replay pauses in it
    for seq in range(4, 17):  # over the budget at the last one: the oldest segment goes, 1 batch undelivered
        spool.append(_batch(seq))
    assert spool.dropped_batches == 1 and spool.dropped_records == 3
    spool.replay(lambda b: sent.append(b["batch_id"]))
    assert sent == [f"r1:{i}" for i in range(17) if i != 3]


def test_a_failing_directory_fsync_on_rotation_loses_nothing_later(tmp_path: Path, monkeypatch) -> None:
    import probe.client.spool as spool_module

    line = len(protocol.dumps(_batch(0))) + 1
    spool = RunSpool.create(tmp_path, "r1", CREATE, segment_bytes=2 * line, fsync="batch")
    real = spool_module._fsync_dir
    calls = {"n": 0}

    def flaky(path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "I/O error")
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", flaky)
    with pytest.raises(OSError):
        spool.append(_batch(0))  # the rotation's fsync fails: reported to the caller as a failed write
    for seq in range(1, 6):
        spool.append(_batch(seq))  # and the spool goes on, consistent
    sent: list[str] = []
    spool.replay(lambda b: sent.append(b["batch_id"]))
    assert sent[-5:] == [f"r1:{i}" for i in range(1, 6)]


def test_reopen_skips_a_torn_last_line_and_knows_the_run(tmp_path: Path) -> None:
    spool = RunSpool.create(tmp_path, "r1", CREATE)
    spool.append(_batch(0))
    spool.append(_batch(1))
    spool.write_finish("crashed")
    spool.release()
    segment = next(spool.directory.glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(b'{"batch_id": "r1:2", "scal')  # a process killed mid-write
    reopened = RunSpool.open(spool.directory)
    assert reopened.create_body == CREATE and reopened.finish_status == "crashed" and reopened.owns_run
    sent: list[str] = []
    reopened.replay(lambda b: sent.append(b["batch_id"]))
    assert sent == ["r1:0", "r1:1"] and reopened.skipped_lines == 1
    assert spooled_runs(tmp_path) == [spool.directory]


def test_a_live_spool_is_not_opened_twice(tmp_path: Path) -> None:
    spool = RunSpool.create(tmp_path, "r1", CREATE)
    with pytest.raises(SpoolBusy):
        RunSpool.open(spool.directory)
    spool.release()
    RunSpool.open(spool.directory).release()
