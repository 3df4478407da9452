"""Retries, backoff and User-Agent, against a loopback HTTP server that plays a flaky lore.

public-inbox itself never answers 503 or 429 on purpose, so this one server stands in for
lore.kernel.org's overload answers; everything else is tested against real public-inbox.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot import USER_AGENT
from bot.config import ArchiveSection
from bot.errors import InfraError
from bot.intake.client import ArchiveClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ATOM = b"""<?xml version="1.0" encoding="us-ascii"?>
<feed xmlns="http://www.w3.org/2005/Atom"><entry><title>[PATCH] x</title>
<updated>2024-01-02T03:04:05Z</updated><link href="BASE/kvm/a%2Fb@example.org/"/></entry>
</feed>"""


class Flaky:
    def __init__(self) -> None:
        self.script: list[int] = []
        self.seen: list[tuple[str, str]] = []  # (path, user agent)
        self.base = ""


@pytest.fixture
def flaky() -> Iterator[Flaky]:
    state = Flaky()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.seen.append((self.path, self.headers.get("User-Agent", "")))
            code = state.script.pop(0) if state.script else 200
            body = ATOM.replace(b"BASE", state.base.encode()) if code == 200 else b"busy\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_retries_429_and_5xx_then_succeeds_with_named_user_agent(flaky: Flaky) -> None:
    flaky.script = [429, 503]
    cfg = ArchiveSection(base_url=flaky.base, retries=2, backoff_s=0.01)
    with ArchiveClient(cfg) as client:
        entries = client.new_atom("kvm")
    assert [e.msgid for e in entries] == ["a/b@example.org"]  # %2F unescaped
    assert len(flaky.seen) == 3
    assert {ua for _, ua in flaky.seen} == {USER_AGENT}
    assert USER_AGENT.startswith("kbot/")


def test_gives_up_after_retries_naming_url_and_status(flaky: Flaky) -> None:
    flaky.script = [503] * 10
    cfg = ArchiveSection(base_url=flaky.base, retries=3, backoff_s=0.01)
    with ArchiveClient(cfg) as client, pytest.raises(InfraError) as err:
        client.new_atom("kvm")
    assert len(flaky.seen) == 4
    assert f"GET {flaky.base}/kvm/new.atom" in str(err.value) and "HTTP 503" in str(err.value)


def test_client_error_is_not_retried(flaky: Flaky) -> None:
    flaky.script = [403]
    cfg = ArchiveSection(base_url=flaky.base, retries=3, backoff_s=0.01)
    with ArchiveClient(cfg) as client, pytest.raises(InfraError, match="HTTP 403"):
        client.raw("x@example.org", "kvm")
    assert len(flaky.seen) == 1
    assert flaky.seen[0][0] == "/kvm/x@example.org/raw"
