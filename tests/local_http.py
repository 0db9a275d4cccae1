"""A loopback HTTP server for the download tests: 127.0.0.1 only, never the internet."""
from __future__ import annotations

import contextlib
import http.server
import socket
import threading


@contextlib.contextmanager
def serve(handler, **attrs):
    """Run ``handler`` on a free port; ``srv.base`` is its URL. Extra attributes go on the server."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for name, value in attrs.items():
        setattr(srv, name, value)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (the 'offline' case)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def closed_port_url(name: str) -> str:
    return f"http://127.0.0.1:{closed_port()}/{name}"
