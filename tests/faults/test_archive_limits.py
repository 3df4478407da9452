"""The archive client's work is bounded: in time (an overall deadline per request, whatever the
server trickles) and in memory (a .gz of a million tiny mails stops at a message cap, with a
clear InputError, in a process whose peak RSS stays small)."""

from __future__ import annotations

import gzip
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot import proc
from bot.config import ArchiveSection
from bot.errors import InfraError, InputError
from bot.intake import client as client_module
from bot.intake.client import ArchiveClient
from bot.intake.local_inbox import LocalInbox
from tests.faults.fault_proxy import Fault, FaultProxy, Rule
from tests.fixtures.public_inbox import series_mails

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
COVER = "dl-v1-0@example.org"
TIMEOUT_S = 2.0
BOMB_MAILS = 400_000
RSS_BOUND_MIB = 300


def _client(base_url: str, **kw: object) -> ArchiveClient:
    settings: dict[str, object] = {"base_url": base_url, "timeout_s": TIMEOUT_S, "retries": 2,
                                   "backoff_s": 0.01}
    settings.update(kw)
    return ArchiveClient(ArchiveSection(**settings))  # type: ignore[arg-type]


@pytest.fixture
def proxied(local_inbox: LocalInbox) -> Iterator[FaultProxy]:
    local_inbox.deliver_many(series_mails("dl", 3), "kvm")
    with FaultProxy(local_inbox.base_url) as proxy:
        yield proxy


@pytest.mark.parametrize("head", [False, True], ids=["body", "head-and-body"])
def test_trickling_archive_is_cut_off_at_the_overall_deadline(
    proxied: FaultProxy, head: bool
) -> None:
    # One byte every 0.5 s: never a 2 s silence, so requests' own (per read) timeout never
    # fires; the whole t.mbox.gz would take minutes.
    proxied.add(Rule(Fault.TRICKLE, pattern=r"/t\.mbox\.gz$", interval_s=0.5, head=head))
    with _client(proxied.base_url) as client:
        began = time.monotonic()
        with pytest.raises(InfraError, match=r"within the 2s deadline \(archive.timeout_s\)"):
            client.thread_mbox(COVER, "kvm")
        elapsed = time.monotonic() - began
        assert elapsed < 3 * TIMEOUT_S  # bound, not a benchmark: proves the deadline exists
        assert [s.fault for s in proxied.seen] == [Fault.TRICKLE]  # not retried
        proxied.clear()
        assert b"[PATCH 3/3]" in client.thread_mbox(COVER, "kvm")  # the client still works


def test_every_proxy_fault_is_a_clear_infra_error(proxied: FaultProxy) -> None:
    cases = [
        (Rule(Fault.STATUS, status=503), r"unreachable after 3 tries: HTTP 503", 3),
        (Rule(Fault.RESET), r"unreachable after 3 tries: ConnectionError", 3),
        (Rule(Fault.TRUNCATE), r"connection lost while reading", 1),
        (Rule(Fault.TRICKLE, interval_s=0.5), r"within the 2s deadline", 1),
    ]
    with _client(proxied.base_url) as client:
        for rule, message, requests in cases:
            proxied.reset()
            proxied.add(rule)
            with pytest.raises(InfraError, match=message):
                client.thread_mbox(COVER, "kvm")
            assert proxied.injected == requests, rule


# -- a gzip bomb of tiny mails ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """BOMB_MAILS tiny mails as one t.mbox.gz: about 2 MB that would inflate to 40 MB."""
    mails = (b"From mboxrd@z Thu Jan  1 00:00:00 1970\nFrom: b@example.org\n"
             b"Subject: [PATCH] x\nMessage-ID: <%d@bomb>\n\nx\n\n" % i
             for i in range(BOMB_MAILS))
    return gzip.compress(b"".join(mails), compresslevel=6)


@pytest.fixture
def bomb_server(bomb: bytes) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_thread_bomb_stops_at_the_message_cap_keeping_what_came_before(
    bomb_server: str
) -> None:
    with _client(bomb_server, timeout_s=30, max_thread_messages=1000) as client:
        with pytest.raises(client_module.ThreadOverLimit) as err:
            client.thread_messages("x@bomb", "kvm")
        assert "more than 1000 messages (archive.max_thread_messages)" in str(err.value)
        assert isinstance(err.value, InputError) and len(err.value.read) == 1000
        with pytest.raises(InputError, match=r"more than 1000 messages"):
            client.thread_mbox("x@bomb", "kvm")


# Runs `kbot ARGS` in a fresh interpreter and prints its exit code and peak RSS as JSON.
CHILD = """
import json, resource, sys
from bot.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _kbot_child(args: list[str], cwd: Path) -> tuple[int, float, str]:
    env = proc.clean_env({"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO_ROOT)),
                          "KBOT_STATE_DIR": str(cwd / "state")})
    result = proc.run([sys.executable, "-c", CHILD, *args], timeout=600, cwd=cwd, env=env)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return int(out["code"]), float(out["rss_mib"]), result.stderr


def test_series_show_of_a_fetched_thread_bomb_is_bounded(bomb_server: str, tmp_path: Path) -> None:
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(f'schema = 1\ninherit = false\n[archive]\nbase_url = "{bomb_server}"\n'
                   'timeout_s = 60\n[[lists]]\nname = "kvm"\n')
    code, rss, err = _kbot_child(["-c", str(cfg), "series", "show", "x@bomb", "--list", "kvm"],
                                 tmp_path)
    assert code == 2, err
    assert "more than 5000 messages (archive.max_thread_messages)" in err
    assert rss < RSS_BOUND_MIB, f"peak RSS {rss:.0f} MiB"


def test_series_show_of_a_bomb_file_is_bounded(bomb: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bomb.mbox.gz"
    path.write_bytes(bomb)
    code, rss, err = _kbot_child(["series", "show", str(path)], tmp_path)
    assert code == 2, err
    assert "more than 20000 messages" in err
    assert rss < RSS_BOUND_MIB, f"peak RSS {rss:.0f} MiB"
