"""Turning queued log records into wire batches, in the sender thread.

``Run.log`` only appends a tuple to a deque; everything costly happens here, off the training
thread: copying tensor values to the host, grouping points by key, encoding non-finite floats.
Tensors are materialised many at once — one ``torch.stack(...).cpu()`` per (device, dtype) for
scalars and one ``torch.cat(...).cpu()`` for arrays — so a GPU run pays one synchronisation per
flush interval instead of one per logged value. torch is never imported here: a value is a tensor
only if ``torch`` is already loaded (otherwise nobody could have made one).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict
from typing import Any, Iterator, Sequence

import numpy as np

from probe.client import protocol
from probe.client.problems import Problems

SCALARS, ARRAY, EVENT = 0, 1, 2
"""Record kinds, the first field of each queued tuple:

* ``(SCALARS, metrics: dict, step, time)``
* ``(ARRAY, key, values, step, layer, time)``
* ``(EVENT, key, message, step, layer, level, kind, data, time)``
"""

Record = tuple[Any, ...]

YIELD_EVERY = 1000
"""Points converted between voluntary GIL releases (about 1 ms of work)."""


def _torch() -> Any:
    return sys.modules.get("torch")


def _weight(record: Record) -> int:
    """A record's share of a batch: its points, or an array's element count (spectra of every
    layer in one batch could otherwise exceed the server's body limit)."""
    kind = record[0]
    if kind == SCALARS:
        return len(record[1]) if isinstance(record[1], dict) else 1
    if kind == ARRAY:
        values = record[2]
        try:
            numel = getattr(values, "numel", None)
            if callable(numel):
                return max(1, int(numel()))
            size = getattr(values, "size", None)
            return max(1, int(size) if isinstance(size, (int, np.integer)) else len(values))
        except (TypeError, ValueError):
            return 1
    return 1


class BatchBuilder:
    """Builds numbered batches for one run (and one rank of it).

    Args:
        run_id: the run.
        rank: the rank whose batch ids and keys are tagged (``None``/0: untagged).
        key_prefix: put before every scalar and array key (``"rank1."`` for a shared run's rank 1).
        session: nonce for batch ids when the run id was not minted by this process.
        batch_points: start a new batch after this many scalar points plus array elements.
        problems: where conversion failures are counted.
    """

    def __init__(
        self,
        run_id: str,
        *,
        rank: int | None = None,
        key_prefix: str = "",
        session: str | None = None,
        batch_points: int = 20_000,
        problems: Problems | None = None,
    ) -> None:
        self.run_id = run_id
        self.session = session
        self.rank = rank
        self.key_prefix = key_prefix
        self.batch_points = batch_points
        self.problems = problems or Problems()
        self.seq = 0
        self.lost = 0
        self._seq_lock = threading.Lock()  # the sender's encoder and a finish() take-over may both number
        """Values that could not be converted (not a number, a tensor with several elements, ...)."""

    def build(self, records: Sequence[Record]) -> list[protocol.Batch]:
        """Convert records (in logging order) to batches of at most ``batch_points`` records."""
        return list(self.iter_build(records))

    def iter_build(self, records: Sequence[Record]) -> Iterator[protocol.Batch]:
        """:meth:`build`, one batch at a time, so a caller can send one batch while the next is built."""
        start = 0
        while start < len(records):
            end, points = start, 0
            while end < len(records) and points < self.batch_points:
                points += _weight(records[end])
                end += 1
            batch = self._build_one(records[start:end])
            if batch["scalars"] or batch["arrays"] or batch["events"]:
                yield batch
            start = end

    def _next_id(self) -> str:
        with self._seq_lock:  # two batches with one id: the server would keep only the first
            self.seq += 1
            seq = self.seq
        return protocol.batch_id(self.run_id, seq, self.rank, self.session)

    def _lose(self, kind: str, message: str, n: int = 1) -> None:
        self.lost += n
        self.problems.report(kind, message, n)

    # -- one batch ----------------------------------------------------------------------------------

    def _build_one(self, records: Sequence[Record]) -> protocol.Batch:
        torch = _torch()
        tensor_type = torch.Tensor if torch is not None else ()
        series: dict[str, tuple[list[int], list[float], list[Any]]] = {}
        pending: list[tuple[list[Any], int, Any]] = []  # (values list, index, tensor)
        arrays: list[protocol.ArrayRecord] = []
        array_values: list[Any] = []  # parallel to arrays: tensor or array-like
        events: list[protocol.EventRecord] = []
        prefix = self.key_prefix

        since_yield = 0
        for record in records:
            kind = record[0]
            if since_yield >= YIELD_EVERY:
                # Hand the GIL back to the training thread now rather than when the interpreter
                # forces a switch (5 ms): this is what keeps run.log's tail latency in microseconds.
                time.sleep(0)
                since_yield = 0
            since_yield += len(record[1]) if kind == SCALARS and isinstance(record[1], dict) else 1
            try:
                if kind == SCALARS:
                    _, metrics, step, t = record
                    step = int(step)
                    for key, value in metrics.items():
                        if not isinstance(key, str) or not key:
                            self._lose("bad_key", f"metric keys must be non-empty strings, got {key!r}; dropped")
                            continue
                        cls = type(value)
                        tensor = None
                        if cls is float or cls is int:
                            value = float(value)
                        elif isinstance(value, tensor_type):
                            if value.numel() != 1 or value.is_complex():
                                self._lose(
                                    "bad_value",
                                    f"value of {key!r} is a tensor of shape {tuple(value.shape)}, not a real scalar; dropped",
                                )
                                continue
                            tensor, value = value, None  # placeholder until the group transfer
                        else:
                            try:
                                value = float(value)
                            except (TypeError, ValueError):
                                self._lose(
                                    "bad_value",
                                    f"value of {key!r} is not a number ({type(value).__name__}); dropped",
                                )
                                continue
                        entry = series.get(key)
                        if entry is None:
                            entry = series[key] = ([], [], [])
                        entry[0].append(step)
                        entry[1].append(t)
                        entry[2].append(value)
                        if tensor is not None:
                            pending.append((entry[2], len(entry[2]) - 1, tensor))
                elif kind == ARRAY:
                    _, key, values, step, layer, t = record
                    arrays.append(
                        {"key": prefix + str(key), "layer": str(layer), "step": int(step), "time": t,
                         "shape": [], "values": []}
                    )
                    array_values.append(values)
                elif kind == EVENT:
                    _, key, message, step, layer, level, ev_kind, data, t = record
                    payload = protocol.encode_json_value(dict(data) if data else {})
                    if self.rank:
                        payload["rank"] = self.rank
                    events.append(
                        {"kind": str(ev_kind), "level": str(level), "key": None if key is None else str(key),
                         "layer": None if layer is None else str(layer),
                         "step": None if step is None else int(step), "time": t, "message": str(message),
                         "data": payload}
                    )
            except Exception as exc:  # noqa: BLE001 - one bad record must not lose the batch
                self._lose("bad_record", f"could not read a logged record ({exc!r}); dropped")

        if pending:
            self._materialize_scalars(pending)
        arrays = self._materialize_arrays(arrays, array_values)

        scalars: list[protocol.ScalarSeries] = []
        for key, (steps, times, values) in series.items():
            if any(v is None for v in values):  # tensors that failed to convert
                keep = [i for i, v in enumerate(values) if v is not None]
                steps, times, values = [steps[i] for i in keep], [times[i] for i in keep], [values[i] for i in keep]
                if not steps:
                    continue
            scalars.append(
                {"key": prefix + key, "steps": steps, "times": times, "values": protocol.encode_floats(values)}
            )
        return {"batch_id": self._next_id(), "scalars": scalars, "arrays": arrays, "events": events}

    def _materialize_scalars(self, pending: list[tuple[list[Any], int, Any]]) -> None:
        torch = _torch()
        groups: dict[tuple[Any, Any], list[tuple[list[Any], int, Any]]] = defaultdict(list)
        for item in pending:
            tensor = item[2]
            groups[(tensor.device, tensor.dtype)].append(item)
        for group in groups.values():
            try:
                with torch.no_grad():
                    # Under no_grad neither detach() nor a graph is needed; reshape only the rare
                    # (1,)-shaped values (each call costs microseconds, per tensor).
                    stacked = torch.stack([t if t.dim() == 0 else t.reshape(()) for _, _, t in group])
                    if stacked.dtype not in (torch.float32, torch.float64):
                        stacked = stacked.to(torch.float64)
                    host = stacked.cpu().tolist()
            except Exception as exc:  # noqa: BLE001 - e.g. a CUDA error; the values are lost, training goes on
                self._lose("tensor", f"could not copy {len(group)} tensor values to the host ({exc!r}); dropped", len(group))
                continue
            for (values, index, _), value in zip(group, host):
                values[index] = float(value)

    def _materialize_arrays(self, arrays: list[protocol.ArrayRecord], sources: list[Any]) -> list[protocol.ArrayRecord]:
        torch = _torch()
        hosts: list[np.ndarray | None] = [None] * len(arrays)
        tensor_groups: dict[tuple[Any, Any], list[int]] = defaultdict(list)
        for i, values in enumerate(sources):
            if torch is not None and isinstance(values, torch.Tensor):
                tensor_groups[(values.device, values.dtype)].append(i)
                arrays[i]["shape"] = list(values.shape)
            else:
                try:
                    host = np.asarray(values, dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    self._lose("bad_value", f"array {arrays[i]['key']!r} is not numeric ({exc}); dropped")
                    continue
                arrays[i]["shape"] = list(host.shape)
                hosts[i] = host
        for indices in tensor_groups.values():
            try:
                with torch.no_grad():
                    flat = torch.cat([sources[i].detach().reshape(-1) for i in indices])
                    if flat.dtype not in (torch.float32, torch.float64):
                        flat = flat.to(torch.float32)  # bf16/half/int have no (or a lossy) numpy twin
                    host = flat.cpu().numpy()
            except Exception as exc:  # noqa: BLE001
                self._lose("tensor", f"could not copy {len(indices)} arrays to the host ({exc!r}); dropped", len(indices))
                continue
            offset = 0
            for i in indices:
                n = sources[i].numel()
                hosts[i] = host[offset : offset + n]
                offset += n
        out: list[protocol.ArrayRecord] = []
        for record, host in zip(arrays, hosts):
            if host is None:
                continue
            record["values"] = protocol.encode_array(host)
            out.append(record)
        return out

