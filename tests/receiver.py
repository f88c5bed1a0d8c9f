"""A real HTTP webhook receiver on 127.0.0.1 for tests and benchmarks: records what it gets, or
answers errors, or hangs, as told."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "fail", "hang"]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


def _reserve(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` and not listening: it keeps the port from anyone else
    (an outgoing connection, another test), and a connection to it is refused, as to a receiver
    that is down."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@dataclass
class Receiver:
    mode: Mode = "ok"
    received: list[Received] = field(default_factory=list)
    _socket: socket.socket = field(default_factory=_reserve)
    _server: ThreadingHTTPServer | None = None
    _release: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if receiver.mode == "hang":
                    receiver._release.wait(120)
                    return
                if receiver.mode == "fail":
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.received.append(Received(dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._release.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._socket  # the reserved one: listening now
        server.server_activate()
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down again: connections are refused, and the port stays reserved."""
        self._release.set()
        if self._server is not None:
            port = self.port
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._socket = _reserve(port)

    def close(self) -> None:
        self.stop()
        self._socket.close()
