"""Ports, URLs and readiness checks of the embedded server."""

from __future__ import annotations

import socket


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"redis://{shown}:{port}/0"


def _connect_host(host: str) -> str:
    """Where to connect to reach a server bound on ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as redis-server sets it, so a port in TIME_WAIT counts as free.
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ping(host: str, port: int) -> bool:
    """True when a server on ``host:port`` answers PING with PONG (not LOADING, not an error).

    A server with a password answers NOAUTH once it is ready: that counts as ready too.
    """
    try:
        with socket.create_connection((_connect_host(host), port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))
