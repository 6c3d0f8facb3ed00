"""Static page for the reference app: ``python -m refapp.frontend`` (env ``PORT``, ``BACKEND_URL``).

The browser calls the backend directly (it sends CORS headers), so this server only hands
out three fixed files plus ``/config.js``, which tells the page where the backend lives.
Only files named in ``ROUTES`` are served, so no request path ever touches the filesystem.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Mapping
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from refapp import settings
from refapp.settings import HOST

STATIC_DIR = Path(__file__).resolve().parent / "static"
ROUTES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}


def config_js(backend_url: str) -> bytes:
    return f"window.REFAPP_CONFIG = {json.dumps({'backendUrl': backend_url})};\n".encode()


def content_security_policy(backend_url: str) -> str:
    """Allow scripts and styles from here only, and API calls to the configured backend only."""
    parts = urlsplit(backend_url)
    return (
        f"default-src 'self'; connect-src 'self' {parts.scheme}://{parts.netloc}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class Handler(BaseHTTPRequestHandler):
    server_version = "refapp-frontend"

    def __init__(self, *args: Any, backend_url: str, files: Mapping[str, bytes], **kwargs: Any) -> None:
        self.backend_url = backend_url
        self.files = files
        super().__init__(*args, **kwargs)

    def _resolve(self) -> tuple[HTTPStatus, bytes, str]:
        path = urlsplit(self.path).path
        if path == "/config.js":
            return HTTPStatus.OK, config_js(self.backend_url), "text/javascript; charset=utf-8"
        if path == "/health":
            return HTTPStatus.OK, b'{"status": "ok"}\n', "application/json"
        if path in ROUTES:
            name, content_type = ROUTES[path]
            return HTTPStatus.OK, self.files[name], content_type
        return HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8"

    def _respond(self, *, with_body: bool) -> None:
        status, body, content_type = self._resolve()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", content_security_policy(self.backend_url))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._respond(with_body=True)

    def do_HEAD(self) -> None:
        self._respond(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per request on stdout, like the backend's access log."""
        sys.stdout.write(f"{self.address_string()} - {format % args}\n")
        sys.stdout.flush()


def load_files() -> dict[str, bytes]:
    """Read the assets once at start, so a broken install fails before serving anything."""
    return {name: (STATIC_DIR / name).read_bytes() for name, _ in ROUTES.values()}


def main() -> int:
    try:
        port = settings.port()
        backend_url = settings.backend_url()
    except settings.ConfigError as exc:
        print(f"refapp.frontend: error: {exc}", file=sys.stderr)
        return 2
    handler = partial(Handler, backend_url=backend_url, files=load_files())
    try:
        server = ThreadingHTTPServer((HOST, port), handler)
    except OSError as exc:
        print(f"refapp.frontend: error: cannot listen on {HOST}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    server.daemon_threads = True

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it must run outside this (main) thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"refapp.frontend: serving on http://{HOST}:{port} (backend {backend_url})", flush=True)
    with server:
        server.serve_forever()
    print("refapp.frontend: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
