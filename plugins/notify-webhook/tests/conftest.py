"""A real webhook receiver for the tests: http.server on 127.0.0.1 in a background thread.

It records every request (arrival time, headers, raw body) and answers from a script the test
sets up front — ``[503, 503]`` then 200 for every request after — so retries go through real
sockets and a real HTTP stack, with nothing mocked.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    sleep: float = 0.0  # seconds to wait before answering (timeouts)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.script: list[Answer] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        Received(time.monotonic(), self.path, dict(self.headers.items()), body)
                    )
                    answer = receiver.script.pop(0) if receiver.script else Answer()
                if answer.sleep:
                    time.sleep(answer.sleep)
                payload = b"ok"
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (timeout test) breaks the pipe: expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/valetkey"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses; 200 afterwards."""
        self.script.extend(Answer(status) for status in statuses)

    def answer_with(
        self, status: int, headers: dict[str, str] | None = None, sleep: float = 0.0
    ) -> None:
        """Answer the next request (after the scripted ones) with headers, or after a pause."""
        self.script.append(Answer(status, tuple((headers or {}).items()), sleep))

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.requests]


@pytest.fixture
def receiver():
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def refused_url():
    """A URL whose port refuses connections: bound, never listening (no race with reuse)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    sock.close()


@pytest.fixture
def webhook_log(caplog):
    """Every record of the notifier's logger at DEBUG, even if valetkey's logging setup turned
    propagation off in this process."""
    logger = logging.getLogger("valetkey.notify.webhook")
    logger.addHandler(caplog.handler)
    previous = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # caplog's handler sits on the root logger too: no duplicates
    yield caplog
    logger.setLevel(previous[0])
    logger.propagate = previous[1]
    logger.removeHandler(caplog.handler)
