"""Application factory: ``create_app(settings)``; the engine lives on ``app.state`` via the lifespan."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from importlib.metadata import entry_points

from fastapi import FastAPI, Request
from sqlalchemy.engine import make_url

from server import store
from server.api import api_router
from server.api import openapi as api_openapi
from server.config import VERSION, Settings, get_settings
from server.db import make_engine, make_sessionmaker
from server.errors import install_handlers
from server.host_check import HostCheckMiddleware
from server.nul_check import NulCheckMiddleware
from server.store.series import SeriesCache
from server.wire import WireJSONResponse

log = logging.getLogger("optiscope.server")
API_PREFIX = "/api/v1"


class Reaper:
    """Background thread marking runs with a stale heartbeat as crashed."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optiscope-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reap_once(self) -> int:
        session = self._app.state.sessionmaker()
        try:
            with self._app.state.write_lock:
                return store.reap_stale_runs(session=session, timeout_s=self._settings.heartbeat_timeout)
        finally:
            session.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.reap_once()
                if n:
                    log.info("marked %d run(s) crashed (no heartbeat for %.0fs)", n,
                             self._settings.heartbeat_timeout)
            except Exception:  # a DB hiccup must not kill the reaper
                log.exception("heartbeat reaper failed")
            self._stop.wait(self._settings.reaper_interval)


def _lifespan_for(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url)
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        sqlite = make_url(settings.db_url).get_backend_name() == "sqlite"
        app.state.write_lock = threading.Lock() if sqlite else contextlib.nullcontext()
        app.state.series_cache = (SeriesCache(settings.series_cache_mb * 1024 * 1024)
                                  if settings.series_cache_mb > 0 else None)
        reaper = Reaper(app, settings)
        app.state.reaper = reaper
        if settings.reaper_interval > 0:
            reaper.start()
        try:
            yield
        finally:
            if settings.reaper_interval > 0:
                reaper.stop()
            engine.dispose()

    return lifespan


def _mount_plugins(app: FastAPI, *, api_url: str, bind_host: str) -> None:
    """Mounted apps get the API's URL and the bind host, never a token: the dashboard acts with
    the authority of the person using it (see dashboard.auth), not with one of its own."""
    for entry in entry_points(group="optiscope.mounts"):
        try:
            entry.load()(app, api_url=api_url, bind_host=bind_host)
        except Exception as exc:  # a broken/missing dashboard must not take the API down
            log.warning("mount %r not loaded: %s", entry.name, exc)


def create_app(settings: Settings | None = None, *, mounts: bool = True) -> FastAPI:
    """Build the app. The schema must already be migrated (``optiscope db upgrade`` / ``serve``).

    Args:
        settings: defaults to ``get_settings()`` (environment).
        mounts: load the ``optiscope.mounts`` entry points (tests of the API turn this off).
    """
    settings = settings or get_settings()
    app = FastAPI(title="Optiscope", version=VERSION, lifespan=_lifespan_for(settings),
                  default_response_class=WireJSONResponse)
    app.state.settings = settings
    app.state.array_reads = threading.BoundedSemaphore(max(1, settings.array_read_concurrency))
    install_handlers(app)
    # Outermost last: a foreign Host is refused before anything else (the mounted dashboard too).
    app.add_middleware(NulCheckMiddleware)
    app.add_middleware(HostCheckMiddleware, settings=settings)
    app.include_router(api_router, prefix=API_PREFIX)
    api_openapi.install(app)

    @app.api_route("/api/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
                   include_in_schema=False)
    def api_not_found(path: str, request: Request) -> WireJSONResponse:
        return WireJSONResponse({"detail": f"no such API endpoint: {request.method} /api/{path}"},
                                status_code=404)

    if mounts:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        _mount_plugins(app, api_url=f"http://{host}:{settings.port}{API_PREFIX}", bind_host=settings.host)
    return app
