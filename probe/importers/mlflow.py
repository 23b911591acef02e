"""Read an MLflow tracking store (file store, database or server) with MLflow's own client.

``TRACKING_URI[/experiment]``: the whole argument is first read as a tracking URI with every
experiment; when its last path segment names an experiment of the store above it (by name or
id), only that experiment is read. Each MLflow run becomes one Optiscope run: params as config
(numbers parsed), metrics' full histories as series with their wall times, user tags as
``key=value`` tags (all tags kept in ``config["mlflow_tags"]``). The run id is derived from the
MLflow run id, so the same store imported twice, or moved, maps to the same Optiscope runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from probe.importers.model import ImportedRun, ReadResult, parse_param, stable_run_id

_PAGE = 1000
_ENDED = {"FAILED": "crashed", "KILLED": "crashed"}


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImportError("importing MLflow runs needs the mlflow-skinny package: "
                          "pip install 'optiscope[importers]'") from None
    return MlflowClient(tracking_uri=uri)


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """Let MLflow open a file store while this import reads it.

    MLflow 3 refuses its own file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set, yet years of
    runs live in ``mlruns/`` directories; reading them is what an import is for. The variable is
    put back afterwards so nothing else in the process is affected.
    """
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _as_uri(source: str) -> str:
    """A bare path (``./mlruns``) as the ``file://`` URI MLflow expects."""
    if "://" in source or source.startswith(("sqlite:", "postgresql:", "mysql:", "databricks")):
        return source
    return Path(source).expanduser().resolve().as_uri()


def _file_path(uri: str) -> Path | None:
    return Path(urlsplit(uri).path) if uri.startswith("file:") else None


def split_source(source: str) -> tuple[str, str | None]:
    """``(tracking_uri, experiment or None)`` for a ``TRACKING_URI[/experiment]`` argument.

    A file store is only ever read where it exists: MLflow's file store creates a store at a
    missing path, and an import must not write into the user's directories.
    """
    uri = _as_uri(source).rstrip("/")
    parts = urlsplit(uri)
    head, _sep, last = parts.path.rpartition("/")
    path = _file_path(uri)
    if path is not None:
        if (path / "meta.yaml").is_file():  # an experiment directory of a file store
            return path.parent.as_uri(), path.name
        if path.is_dir():
            return uri, None
        if last and Path(head).is_dir():
            return Path(head).as_uri(), last
        raise FileNotFoundError(f"{source}: no MLflow file store there")
    if uri.startswith("sqlite:"):  # sqlite:///runs/mlflow.db/<experiment>: the database file is above
        database = Path(parts.path[1:])  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if not database.is_file() and database.parent.is_file():
            return uri.rpartition("/")[0], last
        if not database.is_file():
            raise FileNotFoundError(f"{source}: no MLflow database there")
        return uri, None
    if last and head not in ("", "/"):
        parent = urlunsplit(parts._replace(path=head))
        try:
            client = _client(parent)
            if _experiment(client, last) is not None:
                return parent, last
        except ImportError:
            raise
        except Exception:  # noqa: BLE001 - the parent is no store: the whole URI is
            pass
    return uri, None


def _experiment(client: Any, name_or_id: str) -> Any:
    found = client.get_experiment_by_name(name_or_id)
    if found is None and name_or_id.isdigit():
        try:
            found = client.get_experiment(name_or_id)
        except Exception:  # noqa: BLE001 - MLflow raises its own error for an unknown id
            found = None
    return found


def read_store(source: str, *, project: str | None = None) -> ReadResult:
    """Every run of the store (or of its named experiment) as :class:`ImportedRun`."""
    with _file_store_allowed():
        return _read_store(source, project)


def _read_store(source: str, project: str | None) -> ReadResult:
    uri, experiment_name = split_source(source)
    client = _client(uri)
    if experiment_name is not None:
        experiment = _experiment(client, experiment_name)
        if experiment is None:
            raise LookupError(f"{source}: no experiment {experiment_name!r} in the MLflow store at {uri}")
        experiments = [experiment]
    else:
        experiments = list(client.search_experiments())
    result = ReadResult()
    for experiment in experiments:
        token = None
        while True:
            page = client.search_runs([experiment.experiment_id], max_results=_PAGE, page_token=token)
            for run in page:
                where = f"{uri} run {run.info.run_id} ({run.info.run_name})"
                try:
                    result.runs.append(_read_run(client, run, experiment, project or experiment.name, where))
                except Exception as exc:  # noqa: BLE001 - one broken run must not stop the others
                    result.problems.append(
                        f"{where}: could not be read ({type(exc).__name__}: {exc}); skipped")
            token = page.token
            if not token:
                break
    return result


def _read_run(client: Any, run: Any, experiment: Any, project: str, where: str) -> ImportedRun:
    info, data = run.info, run.data
    config: dict[str, Any] = {k: parse_param(v) for k, v in data.params.items()}
    config["mlflow_tags"] = dict(data.tags)
    config["mlflow_experiment"] = experiment.name
    tags = ["mlflow"] + [f"{k}={v}"[:200] for k, v in sorted(data.tags.items())
                         if not k.startswith("mlflow.") and "\x00" not in f"{k}{v}"]
    imported = ImportedRun(
        run={"id": stable_run_id("mlflow", project, info.run_id), "project": project[:200],
             "name": (info.run_name or info.run_id)[:500], "config": config, "tags": tags},
        source=where, status=_ENDED.get(info.status, "finished"))
    for key in data.metrics:
        history = client.get_metric_history(info.run_id, key)
        imported.scalars[key] = [(int(m.step), m.timestamp / 1000.0, float(m.value)) for m in history]
    return imported
