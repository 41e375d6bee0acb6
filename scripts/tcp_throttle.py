"""A small TCP proxy that caps bandwidth per connection and adds latency, as a cluster's S3
does (loopback MinIO has neither). Stdlib only; used by the cold-start benchmark and the
fault tests.

    with Throttle(upstream=("127.0.0.1", 9000), rate_bps=40e6, latency_s=0.002) as t:
        ... point S3_ENDPOINT_URL at t.url ...

Each accepted connection gets its own upstream connection and two pumps (one per direction).
A pump reads up to 64 KiB, holds it for ``latency_s`` (one way) and sends it paced to
``rate_bps`` bytes/s (token bucket per connection and direction; 0 = uncapped). ``rate_bps``
may be changed while running; :meth:`close_all` drops every open connection (a server going
away mid-download).
"""
from __future__ import annotations

import collections
import socket
import threading
import time

_READ = 64 * 1024


class Throttle:
    def __init__(self, upstream: tuple[str, int], *, rate_bps: float = 0.0,
                 latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.upstream = upstream
        self.rate_bps, self.latency_s = rate_bps, latency_s
        self._srv = socket.create_server((host, port))
        self.host, self.port = self._srv.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.bytes_down = 0  # upstream -> client, all connections
        self._thread = threading.Thread(target=self._accept, name="throttle-accept",
                                         daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Throttle:
        self._thread.start()
        return self

    def __enter__(self) -> Throttle:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._srv.close()
        except OSError:
            pass
        self.close_all()

    def close_all(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.update((client, up))
            threading.Thread(target=self._pump, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        """Read from ``src``; deliver to ``dst`` after the latency, paced to the rate."""
        queue: collections.deque = collections.deque()
        cond = threading.Condition()
        eof = [False]

        def sender() -> None:
            allowance, last = 0.0, time.monotonic()
            try:
                while True:
                    with cond:
                        while not queue and not eof[0]:
                            cond.wait()
                        if not queue:
                            break
                        t_in, data = queue.popleft()
                    wait = t_in + self.latency_s - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    view = memoryview(data)
                    while view:
                        rate = self.rate_bps
                        if rate > 0:
                            now = time.monotonic()
                            allowance = min(allowance + (now - last) * rate, rate * 0.01 + _READ)
                            last = now
                            if allowance < 1:
                                time.sleep(min(0.01, (1 - allowance) / rate + 0.0005))
                                continue
                            n = min(len(view), int(allowance))
                            allowance -= n
                        else:
                            n = len(view)
                        sent = dst.send(view[:n])
                        if down:
                            self.bytes_down += sent
                        view = view[sent:]
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        try:
            while True:
                data = src.recv(_READ)
                if not data:
                    break
                with cond:
                    queue.append((time.monotonic(), data))
                    cond.notify()
        except OSError:
            pass
        finally:
            with cond:
                eof[0] = True
                cond.notify()
            t.join()
            for s in (src, dst):
                with self._lock:
                    self._conns.discard(s)
            try:
                src.close()
            except OSError:
                pass
