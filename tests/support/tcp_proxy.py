"""A small threaded TCP proxy for cutting a connection under load without stopping the server.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        proxy.cut()      # every open connection closed; new ones accepted and closed at once
        proxy.restore()  # new connections reach the server again

The shared PostgreSQL server is never stopped: only the path to it is.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self

CHUNK = 65536


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to `host:port`.

    The owner calls `close()` (or uses it as a context manager): it stops the accept thread and
    closes every connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # the accept loop notices close() within 0.1 s
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._is_cut = False
        self._closing = threading.Event()
        self.accepted = 0  # connections accepted so far, cut or not
        self._accept_thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._accept_thread.start()

    def cut(self) -> None:
        """Close every open connection, and close new ones as soon as they are accepted."""
        with self._lock:
            self._is_cut = True
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            _shut(sock)

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._is_cut = False

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._accept_thread.join()
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            with self._lock:
                refused = self._is_cut
            if refused:
                _shut(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _shut(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._is_cut:  # cut while connecting upstream
                    refused = True
                else:
                    self._sockets.update((client, upstream))
            if refused:
                _shut(client)
                _shut(upstream)
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                with self._lock:
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy one direction until either side closes, then close both."""
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
        except OSError:
            pass  # the other pump or cut() closed a socket: this direction ends too
        finally:
            with self._lock:
                self._sockets.difference_update((src, dst))
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    """Shut down (waking any thread blocked in recv on it) and close; ignores closed sockets."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
