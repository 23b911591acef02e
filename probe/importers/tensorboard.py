"""Read a TensorBoard log directory with TensorBoard's own event-file loader.

Every directory holding ``events.out.tfevents.*`` files is one TensorBoard run and becomes one
Optiscope run named after its path relative to LOGDIR. Scalars (``add_scalar``, ``tf.summary.scalar``)
become series with their wall times; histograms become arrays (key ``histogram``, layer = tag,
shape ``[buckets, 3]`` of left edge, right edge, count). hparams become the run's config; the
sub-run that ``SummaryWriter.add_hparams`` creates is folded into its parent run.

A damaged or truncated event file is reported by name and its readable records are kept.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from probe.importers.model import ImportedRun, ReadResult, parse_param, stable_run_id

_EVENT_MARK = "tfevents"


def _modules() -> tuple[Any, Any, Any, Any]:
    try:
        from tensorboard.backend.event_processing import event_file_loader
        from tensorboard.compat import tf
        from tensorboard.plugins.hparams import plugin_data_pb2
        from tensorboard.util import tensor_util
    except ImportError:
        raise ImportError("importing TensorBoard logs needs the tensorboard package: "
                          "pip install 'optiscope[importers]'") from None
    return event_file_loader, tf, plugin_data_pb2, tensor_util


def _event_dirs(logdir: Path) -> dict[Path, list[Path]]:
    found: dict[Path, list[Path]] = {}
    for root, _dirs, files in os.walk(logdir):
        events = sorted(Path(root) / f for f in files
                        if _EVENT_MARK in f and not f.endswith(".profile-empty"))
        if events:
            found[Path(root)] = events
    return dict(sorted(found.items()))


def _hparams(content: bytes, plugin_data_pb2: Any) -> dict[str, Any]:
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    if not data.HasField("session_start_info"):
        return {}
    out: dict[str, Any] = {}
    for name, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            number = value.number_value
            out[name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif kind == "string_value":
            out[name] = parse_param(value.string_value)
        elif kind == "bool_value":
            out[name] = value.bool_value
    return out


class _RunReader:
    """Accumulates one TensorBoard run (all its event files) into an :class:`ImportedRun`."""

    def __init__(self, modules: tuple[Any, Any, Any, Any]) -> None:
        self.loader_mod, self.tf, self.plugin_data_pb2, self.tensor_util = modules
        self.plugins: dict[str, str] = {}
        self.scalars: dict[str, list[tuple[int, float, float]]] = {}
        self.arrays: list[dict[str, Any]] = []
        self.config: dict[str, Any] = {}

    def read_file(self, path: Path) -> str | None:
        """Read every record of one event file; returns a problem message, or ``None`` if it was whole."""
        try:
            loader = self.loader_mod.EventFileLoader(str(path))
            for event in loader.Load():
                self._event(event)
        except Exception as exc:  # a peer's reader can fail many ways on a damaged file
            return (f"{path}: could not be read to the end ({type(exc).__name__}: {exc}); "
                    "the rest was imported")
        try:  # Load() stops quietly at a damaged record: look once more to tell that from the end
            next(loader._iterator)
        except StopIteration:
            return None
        except self.tf.errors.DataLossError as exc:
            return f"{path}: damaged or truncated ({exc}); the records before it were imported"
        except Exception as exc:
            return f"{path}: damaged ({type(exc).__name__}: {exc}); the records before it were imported"
        return f"{path}: stopped before its end; the records before it were imported"

    def _event(self, event: Any) -> None:
        if not event.HasField("summary"):
            return
        for value in event.summary.value:
            meta = value.metadata.plugin_data
            if meta.plugin_name:
                self.plugins.setdefault(value.tag, meta.plugin_name)
            plugin = self.plugins.get(value.tag, "")
            if plugin == "hparams":
                self.config.update(_hparams(meta.content, self.plugin_data_pb2))
            elif not value.HasField("tensor"):
                continue
            elif plugin == "scalars":
                number = float(self.tensor_util.make_ndarray(value.tensor).item())
                point = (int(event.step), float(event.wall_time), number)
                self.scalars.setdefault(value.tag, []).append(point)
            elif plugin == "histograms":
                buckets = self.tensor_util.make_ndarray(value.tensor)
                if buckets.ndim != 2 or buckets.shape[1] != 3 or not buckets.size:
                    continue
                values = [float(v) if math.isfinite(v) else 0.0 for v in buckets.astype(float).ravel()]
                self.arrays.append({"key": "histogram", "layer": value.tag, "step": int(event.step),
                                    "time": float(event.wall_time), "shape": [int(buckets.shape[0]), 3],
                                    "values": values})


def read_logdir(logdir: str | os.PathLike[str], *, project: str) -> ReadResult:
    """Every TensorBoard run under ``logdir`` as an :class:`ImportedRun` (raises if it holds none)."""
    modules = _modules()
    root = Path(logdir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{logdir}: not a directory")
    dirs = _event_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"{logdir}: no TensorBoard event files (events.out.tfevents.*) under it")
    result = ReadResult()
    readers: dict[Path, _RunReader] = {}
    for directory, files in dirs.items():
        reader = _RunReader(modules)
        for path in files:
            problem = reader.read_file(path)
            if problem:
                result.problems.append(problem)
        readers[directory] = reader
    for directory, reader in list(readers.items()):
        parent = readers.get(directory.parent)
        only_hparams = reader.config and not reader.arrays and all(
            len(points) <= 1 for points in reader.scalars.values())
        if parent is not None and only_hparams:  # SummaryWriter.add_hparams's timestamped sub-run
            parent.config.update(reader.config)
            for key, points in reader.scalars.items():
                parent.scalars.setdefault(key, []).extend(points)
            del readers[directory]
    for directory, reader in readers.items():
        if not reader.scalars and not reader.arrays and not reader.config:
            continue
        name = directory.relative_to(root).as_posix() if directory != root else root.name
        # The oldest event file's name (time, host, pid, counter) is unique to the writer that started
        # the run: moving the directory or adding event files (training resumed) keeps the id.
        first = dirs[directory][0].name
        run = {"id": stable_run_id("tb", project, first), "project": project, "name": name[:256],
               "config": reader.config, "tags": ["tensorboard"]}
        result.runs.append(ImportedRun(run=run, source=str(directory), scalars=reader.scalars,
                                       arrays=reader.arrays))
    return result
