"""`cifarlab serve`: bind the socket first, so that a taken port or an unknown host is one line
before the model loads, then load the app and hand the socket to uvicorn (the ASGI server
FastAPI is made for)."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from ..errors import CifarlabError, import_extra


def serve(source: str | Path, host: str = "127.0.0.1", port: int = 8000, data_dir: str | None = None,
          device: str = "auto") -> None:  # fmt: skip
    """Serve the page and the JSON API until Ctrl+C. Port 0 takes any free port (printed)."""
    if not 0 <= port <= 65535:
        raise CifarlabError(f"--port must be between 0 and 65535 (got {port}); 0 takes any free port")
    for module in ("fastapi", "uvicorn", "python_multipart"):
        import_extra(module, "serve")
    import uvicorn

    from .app import create_app

    listening = _bind(host, port)
    try:
        app = create_app(source, data_dir, device)
        bound_host, bound_port = listening.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"serving {source} on http://{shown}:{bound_port}/ (Ctrl+C stops it)", flush=True)
        if not _loopback(bound_host):
            print(f"note: {bound_host} is reachable from other machines, and the app has no login", flush=True)
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listening])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl+C, then raises it again: the normal way to stop
        pass
    finally:
        listening.close()
    print("stopped", flush=True)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise CifarlabError(f"--host '{host}' is not an address this machine can listen on ({e.strerror})") from None
    listening = socket.socket(family, kind, proto)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind(address)
    except OSError as e:
        listening.close()
        raise CifarlabError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port (0: any free one)") from None
    return listening


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
