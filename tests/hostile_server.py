"""A raw-socket HTTP server on 127.0.0.1 that misbehaves on purpose, for the reliability tests.

Modes (``HostileServer(mode)``): ``trickle`` sends a valid status line and headers, then the body one
byte every ``interval`` seconds (each read succeeds, so per-read timeouts never fire), as HTTP/1.1 or
(``trickle_http10``, whose connection the client closes after the response) HTTP/1.0; ``trickle_headers``
trickles the status line itself; ``reset`` reads the request and resets the connection (RST);
``bad_chunk`` sends a chunked body with a malformed chunk size; ``redirect_loop`` answers every request
with a 302 to itself; ``echo_key`` answers 400 with the request's ``Authorization``/``key=`` secret
echoed base64-, URL- and JSON-escaped in the error message (after ``body``, as padding). Every
accepted connection is counted.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
import urllib.parse
from types import TracebackType


class HostileServer:
    def __init__(self, mode: str, *, interval: float = 0.2, body: bytes = b"") -> None:
        self.mode = mode
        self.interval = interval
        self.body = body
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> bytes:
        data = b""
        conn.settimeout(5)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                need = int(line.split(b":", 1)[1])
                while len(rest) < need:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
        return head

    def _trickle(self, conn: socket.socket, data: bytes) -> None:
        for i in range(len(data)):
            if self._stop.is_set():
                return
            conn.sendall(data[i : i + 1])
            time.sleep(self.interval)

    def _handle(self, conn: socket.socket) -> None:
        try:
            head = self._read_request(conn)
            if self.mode in ("trickle", "trickle_http10"):
                status = b"HTTP/1.0 200 OK" if self.mode == "trickle_http10" else b"HTTP/1.1 200 OK"
                conn.sendall(status + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
                self._trickle(conn, b" " * 100000)
            elif self.mode == "trickle_headers":
                self._trickle(conn, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100000)
            elif self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif self.mode == "bad_chunk":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b'5\r\n{"a":\r\nzz\r\n'
                )
            elif self.mode == "redirect_loop":
                path = head.split(b" ")[1] if b" " in head else b"/"
                conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: " + path + b"\r\nContent-Length: 0\r\n\r\n")
            elif self.mode == "echo_key":
                self._echo_key(conn, head)
            elif self.mode == "json":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(self.body)).encode()
                    + b"\r\nConnection: close\r\n\r\n"
                    + self.body
                )
        except OSError:
            pass
        finally:
            conn.close()

    def _echo_key(self, conn: socket.socket, head: bytes) -> None:
        text = head.decode("latin-1")
        secret = ""
        for line in text.split("\r\n"):
            if line.lower().startswith("authorization: bearer "):
                secret = line.split(" ", 2)[2]
        if not secret and "key=" in text:
            secret = urllib.parse.unquote(text.split("key=", 1)[1].split("&", 1)[0].split(" ", 1)[0])
        echoed = self.body.decode() + (
            f"bad key b64={base64.b64encode(secret.encode()).decode()} "
            f"url={urllib.parse.quote(secret, safe='')} json={json.dumps(secret)[1:-1]}"
        )
        payload = json.dumps({"error": {"message": echoed}}).encode()
        conn.sendall(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + payload
        )
