"""A scriptable HTTP proxy on loopback that puts faults between kbot and a real server.

It forwards each request to `upstream` (a real public-inbox-httpd, say) and, where a rule says
so, answers in a broken way instead. Real sockets all the way: the client under test sees a
real 503, a real TCP reset, a body that trickles in, or a Content-Length that is never met.

    with FaultProxy(inbox.base_url) as proxy:
        proxy.add(Rule(Fault.STATUS, pattern=r"/t\\.mbox\\.gz$", first=3))  # 3rd thread on: 503
        cfg = ArchiveSection(base_url=proxy.base_url, ...)
        ...
        proxy.clear()  # healthy again
        assert proxy.injected == ...

Rules: a rule applies to the requests its `pattern` (a regex searched in "METHOD /path?query")
matches, or to every request when it has none; `first`..`last` (1-based, inclusive, `last=None`
for ever) count only the requests that rule matched. The first applicable rule wins. Faults:

- STATUS: answer `status` (default 503) with a short body; the upstream is not asked.
- RESET: close the connection with a TCP RST (SO_LINGER 0) before any answer.
- TRICKLE: the upstream's answer, one byte every `interval_s` seconds (the head too, when
  `head=True`; else the status line and headers at once, then the body).
- TRUNCATE: the upstream's status and headers with the full Content-Length, then only the
  first half of the body, then close.

`on_request(seen)` (optional) runs in the handler thread before anything is sent: the kill
tests use it to SIGKILL a client at its k-th request, while that request is in flight.
Every request is listed in `seen`; `injected` counts the faults served.
"""

from __future__ import annotations

import enum
import http.client
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

UPSTREAM_TIMEOUT_S = 30.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer",
                        "upgrade", "proxy-authorization", "proxy-authenticate",
                        "content-length"})


class Fault(enum.Enum):
    STATUS = "status"
    RESET = "reset"
    TRICKLE = "trickle"
    TRUNCATE = "truncate"


@dataclass(frozen=True)
class Rule:
    fault: Fault
    pattern: str | None = None  # regex searched in "METHOD /path?query"; None: every request
    first: int = 1  # the first matching request it applies to (1-based)
    last: int | None = None  # the last one (inclusive); None: no end
    status: int = 503  # STATUS only
    interval_s: float = 1.0  # TRICKLE only: seconds between bytes
    head: bool = False  # TRICKLE only: trickle the status line and headers too


@dataclass(frozen=True)
class Seen:
    """One request the proxy received, in arrival order (number is 1-based)."""

    number: int
    method: str
    path: str
    fault: Fault | None  # what it got; None: forwarded untouched


class FaultProxy:
    """A threaded HTTP/1.0 proxy in front of `upstream` (http://host:port), on 127.0.0.1."""

    def __init__(self, upstream: str, rules: list[Rule] | None = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.on_request: Callable[[Seen], None] | None = None
        self.seen: list[Seen] = []
        self._rules: list[Rule] = list(rules or [])
        self._matched: dict[int, int] = {}  # rule index -> requests it matched so far
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------

    def add(self, rule: Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """No more faults (the request count and `seen` stay)."""
        with self._lock:
            self._rules = []
            self._matched = {}

    def reset(self) -> None:
        """No faults, no hook, and count from 1 again."""
        with self._lock:
            self._rules = []
            self._matched = {}
            self.seen = []
            self.on_request = None

    @property
    def count(self) -> int:
        return len(self.seen)

    @property
    def injected(self) -> int:
        return sum(1 for s in self.seen if s.fault is not None)

    def _decide(self, method: str, path: str) -> tuple[Seen, Rule | None]:
        target = f"{method} {path}"
        with self._lock:
            chosen: Rule | None = None
            for i, rule in enumerate(self._rules):
                if rule.pattern is not None and not re.search(rule.pattern, target):
                    continue
                n = self._matched.get(i, 0) + 1
                self._matched[i] = n
                if chosen is None and n >= rule.first and (rule.last is None or n <= rule.last):
                    chosen = rule
            seen = Seen(len(self.seen) + 1, method, path, chosen.fault if chosen else None)
            self.seen.append(seen)
            return seen, chosen

    # -- serving -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: a fault ends it

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fault-proxy",
                                        daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- one request -------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        seen, rule = self._decide(h.command, h.path)
        hook = self.on_request
        if hook is not None:
            hook(seen)
        if rule is not None and rule.fault is Fault.STATUS:
            text = f"fault proxy: HTTP {rule.status}\n".encode()
            h.send_response(rule.status)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(len(text)))
            h.end_headers()
            h.wfile.write(text)
            return
        if rule is not None and rule.fault is Fault.RESET:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        status, reason, headers, payload = self._forward(h, body)
        head = [f"HTTP/1.0 {status} {reason}\r\n".encode("latin-1")]
        head += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers]
        head.append(f"Content-Length: {len(payload)}\r\n\r\n".encode("latin-1"))
        head_bytes = b"".join(head)
        try:
            if rule is not None and rule.fault is Fault.TRICKLE:
                if not rule.head:
                    h.wfile.write(head_bytes)
                    h.wfile.flush()
                data = (head_bytes if rule.head else b"") + payload
                for i in range(len(data)):
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                    time.sleep(rule.interval_s)
                return
            if rule is not None and rule.fault is Fault.TRUNCATE:
                h.wfile.write(head_bytes + payload[: len(payload) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            h.wfile.write(head_bytes + payload)
        except OSError:
            return  # the client went away (a kill test, a deadline): nothing to do

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[
        int, str, list[tuple[str, str]], bytes
    ]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port,
                                          timeout=UPSTREAM_TIMEOUT_S)
        try:
            # Host stays the client's: public-inbox writes absolute links from it, and they
            # must point at the proxy.
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()  # de-chunked: answered with a Content-Length
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
            return resp.status, resp.reason, kept, payload
        except (OSError, http.client.HTTPException) as exc:
            text = f"fault proxy: upstream failed: {exc}\n".encode()
            return 502, "Bad Gateway", [("Content-Type", "text/plain")], text
        finally:
            conn.close()
