"""JSON API over the reality nodes: ``python -m refapp.backend`` (env ``PORT``, ``DATABASE_URL``).

A database outage must show up as a 503 with a reason, never as a hung request or a
crashed process: the harness that starts this app relies on /health to tell the two apart.
"""

from __future__ import annotations

import contextlib
import copy
import re
import signal
import sys
from collections.abc import AsyncIterator
from types import FrameType
from typing import Any

import anyio.to_thread
import psycopg
import uvicorn
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from refapp import db, settings
from refapp.settings import HOST

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_OFFSET = 2**31 - 1
MAX_ID = 2**63 - 1
MAX_KIND_LENGTH = 100
# Short enough that a dead database answers quickly, long enough for a busy one.
POOL_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2
_DIGITS = re.compile(r"[0-9]{1,19}")


class InvalidParameter(Exception):
    """A request value the API refuses; always answered with 422."""


def short_reason(exc: BaseException) -> str:
    """Keep the part of a libpq error a human needs (e.g. 'database "x" does not exist')."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1].strip()
    return text[:200]


def parse_int(value: str | None, name: str, *, default: int, minimum: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    if not _DIGITS.fullmatch(value):
        raise InvalidParameter(f"{name} must be an integer between {minimum} and {maximum}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise InvalidParameter(f"{name} must be an integer between {minimum} and {maximum}")
    return number


def parse_kind(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_KIND_LENGTH or "\x00" in value:
        raise InvalidParameter(f"kind must be at most {MAX_KIND_LENGTH} characters without NUL")
    return value


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Backend:
    """Holds the pool; endpoints are methods so they need no untyped global app state."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pool = ConnectionPool(
            database_url,
            open=False,
            min_size=1,
            max_size=4,
            timeout=POOL_TIMEOUT,
            kwargs={"connect_timeout": CONNECT_TIMEOUT},
            # A database dropped or restarted under us leaves dead connections in the pool.
            check=ConnectionPool.check_connection,
            name="refapp",
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        # Do not wait for a first connection: a missing database must yield 503s, not a failed start.
        self.pool.open(wait=False)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(lambda: self.pool.close(timeout=5))

    def _diagnose(self) -> str:
        """Explain a pool timeout by trying one direct connection, which reports the real cause."""
        try:
            with psycopg.connect(self.database_url, connect_timeout=CONNECT_TIMEOUT):
                pass
        except psycopg.Error as exc:
            return short_reason(exc)
        return f"no free database connection within {POOL_TIMEOUT:g}s"

    def _unavailable(self, exc: psycopg.Error) -> JSONResponse:
        reason = self._diagnose() if isinstance(exc, PoolTimeout) else short_reason(exc)
        return error(503, f"database unavailable: {reason}")

    def health(self, request: Request) -> Response:
        try:
            with self.pool.connection() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            reason = self._diagnose() if isinstance(exc, PoolTimeout) else short_reason(exc)
            return JSONResponse({"status": "error", "database": reason}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    def list_nodes(self, request: Request) -> Response:
        params = request.query_params
        try:
            kind = parse_kind(params.get("kind"))
            limit = parse_int(params.get("limit"), "limit", default=DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
            offset = parse_int(params.get("offset"), "offset", default=0, minimum=0, maximum=MAX_OFFSET)
        except InvalidParameter as exc:
            return error(422, str(exc))
        try:
            with self.pool.connection() as conn:
                items = db.list_nodes(conn, kind, limit, offset)
                total = db.count_nodes(conn, kind)
        except psycopg.Error as exc:
            return self._unavailable(exc)
        return JSONResponse({"items": items, "total": total, "limit": limit, "offset": offset})

    def get_node(self, request: Request) -> Response:
        raw = str(request.path_params["node_id"])
        try:
            node_id = parse_int(raw, "id", default=0, minimum=1, maximum=MAX_ID)
        except InvalidParameter as exc:
            return error(422, str(exc))
        try:
            with self.pool.connection() as conn:
                node = db.get_node(conn, node_id)
        except psycopg.Error as exc:
            return self._unavailable(exc)
        if node is None:
            return error(404, f"reality node {node_id} not found")
        return JSONResponse(node)

    def stats(self, request: Request) -> Response:
        try:
            with self.pool.connection() as conn:
                result = db.stats(conn)
        except psycopg.Error as exc:
            return self._unavailable(exc)
        return JSONResponse(result)


async def http_error(request: Request, exc: Exception) -> Response:
    """Answer unknown routes and methods in the API's JSON error shape, not Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    return error(500, "internal server error")


def create_app(database_url: str) -> Starlette:
    backend = Backend(database_url)
    return Starlette(
        routes=[
            Route("/health", backend.health, methods=["GET"]),
            Route("/api/reality-nodes", backend.list_nodes, methods=["GET"]),
            Route("/api/reality-nodes/{node_id}", backend.get_node, methods=["GET"]),
            Route("/api/stats", backend.stats, methods=["GET"]),
        ],
        middleware=[Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"])],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=backend.lifespan,
    )


def log_config() -> dict[str, Any]:
    """Uvicorn's logging, plus the pool's warnings so connection failures reach the log."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["psycopg.pool"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    return config


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def main() -> int:
    try:
        port = settings.port()
        url = settings.database_url()
    except settings.ConfigError as exc:
        print(f"refapp.backend: error: {exc}", file=sys.stderr)
        return 2
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, drain, run the lifespan exit) and then
    # re-raises the signal; these handlers turn that into a plain exit so a clean stop reports 0.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    uvicorn.run(
        create_app(url),
        host=HOST,
        port=port,
        log_config=log_config(),
        access_log=True,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
