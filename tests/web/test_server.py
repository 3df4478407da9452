"""`kbot web` over HTTP: read only, no way out of a job's folder, bounded log views, security
headers, clear 404s, and the `kbot web` command as a real child process that stops cleanly."""

from __future__ import annotations

import hashlib
import http.client
import signal
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from bot import codec, proc
from bot.pipeline.jobs_cli import job_artifacts_dir
from bot.state import Store
from bot.vm.model import TestRun
from tests.faults.pipeline_world import REPO_ROOT
from tests.fixtures.smtp import free_port
from tests.web.world import WebWorld

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UA = {"User-Agent": "kbot-web-tests"}


def _get(url: str, **kw: object) -> requests.Response:
    return requests.get(url, timeout=30, headers=UA, **kw)  # type: ignore[arg-type]


def _raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (requests would normalize `..` away)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("User-Agent", UA["User-Agent"])
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _pages(world: WebWorld) -> list[str]:
    return ["/", "/jobs", "/tests", f"/series/{world.regress_series}",
            f"/jobs/{world.console_job}", f"/bisect/{world.bisect_job}",
            f"/jobs/{world.console_job}/console?boot={world.console_key}&run=0",
            "/tests/history?name=state_test+%5Bqemu-tcg%5D", "/static/style.css"]


def _store_digest(state_dir: Path) -> str:
    db = sqlite3.connect(state_dir / "kbot.sqlite3")
    try:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()


def test_read_only(web_server: str, web_world: WebWorld) -> None:
    before = _store_digest(web_world.state_dir)
    for page in _pages(web_world):
        assert _get(web_server + page).status_code == 200, page
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = requests.request(method, web_server + page, timeout=30, headers=UA, data="x")
            assert r.status_code == 405, (method, page, r.status_code)
    assert _store_digest(web_world.state_dir) == before


def test_security_headers(web_server: str, web_world: WebWorld) -> None:
    r = _get(f"{web_server}/series/{web_world.hostile_series}")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and "&lt;script&gt;" in r.text
    assert "server" not in r.headers


def test_other_host_names_are_refused(web_server: str) -> None:
    """A site that points its own name at 127.0.0.1 (DNS rebinding) reads nothing."""
    r = requests.get(web_server + "/", timeout=30, headers={**UA, "Host": "evil.example"})
    assert r.status_code == 400 and "series" not in r.text
    port = urlsplit(web_server).port
    for name in ("localhost", "127.0.0.1"):
        r = requests.get(web_server + "/", timeout=30, headers={**UA, "Host": f"{name}:{port}"})
        assert r.status_code == 200, name


def test_artifact_urls_cannot_leave_the_job_folder(web_server: str, web_world: WebWorld) -> None:
    job = web_world.console_job
    folder = job_artifacts_dir(web_world.state_dir, job)
    store_file = web_world.state_dir / "kbot.sqlite3"
    (folder / "escape.log").unlink(missing_ok=True)
    (folder / "escape.log").symlink_to(store_file)
    (folder / "up").unlink(missing_ok=True)
    (folder / "up").symlink_to(web_world.state_dir)
    for path in (f"/jobs/{job}/raw/repro.sh", f"/jobs/{job}/repro.sh"):  # the second: as
        # reports link it with `[report] artifacts_url` = this app's address
        ok_status, body = _raw_get(web_server, path)
        assert ok_status == 200 and body == (folder / "repro.sh").read_bytes()
    for path in (f"/jobs/{job}/files/../../kbot.sqlite3",
                 f"/jobs/{job}/raw/../../kbot.sqlite3",
                 f"/jobs/{job}/raw/%2e%2e/%2e%2e/kbot.sqlite3",
                 f"/jobs/{job}/raw/..%2f..%2fkbot.sqlite3",
                 f"/jobs/{job}/raw/%2Fetc%2Fpasswd",
                 f"/jobs/{job}/raw//etc/passwd",
                 f"/jobs/{job}/raw/escape.log",
                 f"/jobs/{job}/raw/up/kbot.sqlite3",
                 f"/jobs/{job}/../../kbot.sqlite3",
                 f"/jobs/{job}/escape.log",
                 f"/jobs/{job}/raw/repro.sh%00.txt",
                 f"/jobs/{web_world.bisect_job}/raw/../{job}/repro.sh",
                 "/jobs/0/raw/repro.sh",
                 f"/jobs/{job}/build/..%2f..%2f/log",
                 f"/jobs/{job}/console?boot=../../kbot.sqlite3&run=0"):
        status, body = _raw_get(web_server, path)
        assert status in (400, 404), (path, status)
        assert b"SQLite format" not in body and b"root:" not in body, path


def test_log_views_are_bounded(web_server: str, web_world: WebWorld) -> None:
    folder = job_artifacts_dir(web_world.state_dir, web_world.console_job)
    big = folder / "big.log"
    with big.open("w", encoding="utf-8") as fh:
        for i in range(40_000):
            fh.write(f"[{i:8d}] a console line that keeps going and going\n")
    size = big.stat().st_size
    assert size > 1 << 21
    r = _get(f"{web_server}/jobs/{web_world.console_job}/files/big.log")
    assert r.status_code == 200
    assert len(r.content) < 200_000  # the tail, not the file
    assert "[   39999]" in r.text and "[       0]" not in r.text
    assert "the last 64.0 KiB shown" in r.text
    d = _get(f"{web_server}/jobs/{web_world.console_job}/raw/big.log")
    assert d.status_code == 200 and len(d.content) == size
    assert d.headers["content-disposition"].startswith("attachment")
    assert d.headers["content-type"].startswith("text/plain")
    c = _get(f"{web_server}/jobs/{web_world.console_job}/console",
             params={"boot": web_world.console_key, "run": "0", "download": "1"})
    assert c.status_code == 200 and c.headers["content-disposition"].startswith("attachment")
    assert b"\x1b[31mRED" in c.content  # the download is the log as the guest wrote it


def test_console_falls_back_to_the_jobs_copy(web_server: str, web_world: WebWorld) -> None:
    """A VM run folder that was pruned: the console shown is the copy in the job's folder."""
    with Store.in_state_dir(web_world.state_dir) as store:
        job = store.job_for_series(web_world.regress_series, "test-series")
        assert job is not None
        apply = store.web_step(job.id, "apply")
        assert apply is not None
        tip, bad = apply.data["commits"][2]["sha"], apply.data["commits"][1]["sha"]
        boots = {s.key: s for s in store.steps(job.id, "vmtest")}
    # the tip booted once; the first bad patch twice (a second round): its second boot is n=2
    for key, kept in ((f"boot:{tip}:nested-state:auto:r1", "console-c3-qemu-tcg-1.log"),
                      (f"boot:{bad}:nested-state:auto:r2", "console-c2-qemu-tcg-2.log")):
        run = codec.load(tuple[TestRun, ...], boots[key].data)[0]
        moved = run.console_log.with_name(run.console_log.name + ".pruned")
        run.console_log.rename(moved)
        try:
            url = f"{web_server}/jobs/{job.id}/console"
            page = _get(url, params={"boot": key, "run": "0"})
            assert page.status_code == 200
            assert f"the copy kept in the job&#39;s folder ({kept})" in page.text
            assert "state_test: FAIL" in page.text
            whole = _get(url, params={"boot": key, "run": "0", "download": "1"})
            assert whole.content == moved.read_bytes()
        finally:
            moved.rename(run.console_log)


def test_not_found_and_bad_requests(web_server: str, web_world: WebWorld) -> None:
    for path in ("/series/999", "/series/x", "/jobs/999", "/jobs/abc",
                 f"/bisect/{web_world.console_job}",  # a series job is no bisection
                 "/tests/history?name=no_such_test", "/nothing/here",
                 f"/jobs/{web_world.console_job}/console?boot=boot:nope&run=0",
                 f"/jobs/{web_world.console_job}/console?boot={web_world.console_key}&run=9"):
        r = _get(web_server + path)
        assert r.status_code == 404, path
        assert "Not found" in r.text
    assert _get(web_server + "/?outcome=<script>").status_code == 400
    assert _get(web_server + "/?page=-1").status_code == 400


def test_kbot_web_command(tmp_path: Path, web_world: WebWorld) -> None:
    port = free_port()
    log = tmp_path / "kbot-web.log"

    def ready() -> bool:
        try:
            return _get(f"http://127.0.0.1:{port}/jobs").status_code == 200
        except requests.ConnectionError:
            return False

    bg = proc.start_background(
        [sys.executable, "-m", "bot.cli", "-c", str(web_world.config.source), "--state-dir",
         str(web_world.state_dir), "web", "--port", str(port)],
        ready=ready, ready_timeout=60, max_lifetime_s=120, cwd=REPO_ROOT, log_path=log)
    try:
        assert f"http://127.0.0.1:{port}/" in log.read_text()  # loopback by default
        assert "regress series" in _get(f"http://127.0.0.1:{port}/").text
        bg.signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while bg.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not bg.alive(), "kbot web did not stop on SIGTERM"
    finally:
        code = bg.stop()
    assert code == 0, log.read_text()
    assert "kbot web: stopped" in log.read_text()
