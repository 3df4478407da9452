"""The store: migrations, restart safety, idempotent inserts."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import InfraError
from bot.state import MIGRATIONS, Store
from tests.conftest import REPO_ROOT


def test_fresh_store_is_at_latest_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "kbot.sqlite3"
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.add_message("a@b", "kvm", subject="s", raw=b"raw")
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        msg = store.get_message("a@b")
        assert msg is not None and msg.raw == b"raw"
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_message_and_job_inserts_are_idempotent(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        assert store.add_message("m1", "kvm")
        assert not store.add_message("m1", "kvm", subject="changed")
        sid = store.upsert_series("k#v1", "kvm", title="t", version=1, complete=True, data={"a": 1})
        again = store.upsert_series("k#v1", "kvm", title="t", version=1, complete=True, data={})
        assert again == sid
        j1 = store.add_job(sid, "test-series")
        j2 = store.add_job(sid, "test-series")
        assert j1 == j2
        assert len(store.jobs()) == 1


def test_store_from_newer_kbot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 5}")
    db.close()
    with pytest.raises(InfraError, match="newer than this kbot"):
        Store(path)


def test_failed_transaction_keeps_earlier_data(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.set_cursor("kvm", "c1")
        with pytest.raises(RuntimeError), store.tx() as db:
            db.execute("UPDATE cursors SET value = 'c2'")
            raise RuntimeError("boom")
        assert store.get_cursor("kvm") == "c1"


# -- a store kbot cannot use is an InfraError naming the file and what is wrong ----------------


def _filled_store(path: Path) -> bytes:
    """A real store with some pages of data, as bytes (closed, checkpointed)."""
    with Store(path) as store:
        for i in range(200):
            store.add_message(f"m{i}@x", "kvm", subject="s" * 100, raw=bytes(range(256)) * 12)
    return path.read_bytes()


def test_random_bytes_are_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "kbot.sqlite3"
    path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(5000)))
    with pytest.raises(InfraError) as info:
        Store(path)
    assert str(info.value) == f"store {path} is not a kbot store (file is not a database)"


@pytest.mark.parametrize("cut", ["mid-page", "page-boundary", "half"])
def test_truncated_store_is_damaged_not_a_traceback(tmp_path: Path, cut: str) -> None:
    data = _filled_store(tmp_path / "full.sqlite3")
    size = {"mid-page": len(data) - 1000, "page-boundary": len(data) - 3 * 4096,
            "half": len(data) // 2 + 77}[cut]
    path = tmp_path / "kbot.sqlite3"
    path.write_bytes(data[:size])
    with pytest.raises(InfraError, match=r"^store .*kbot\.sqlite3 is damaged: .*truncated"):
        Store(path)


def test_other_programs_database_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "kbot.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE photos (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(InfraError, match="is not a kbot store .*other tables: photos"):
        Store(path)
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert tables == {"photos"}


def test_state_dir_that_is_a_file_or_a_store_that_is_a_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    with pytest.raises(InfraError, match=f"store {state}/kbot.sqlite3: {state} is not a dir"):
        Store.in_state_dir(state)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "kbot.sqlite3").mkdir()
    with pytest.raises(InfraError, match="kbot.sqlite3 is not a file"):
        Store.in_state_dir(tmp_path / "dir")


BWRAP = shutil.which("bwrap")


@pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed")
@pytest.mark.parametrize("what", ["store", "state-dir", "new-store-in-state-dir"])
def test_read_only_store_is_an_infra_error_on_the_cli(tmp_path: Path, what: str) -> None:
    """A read-only file system (a bind mount: root cannot write through it either)."""
    state = tmp_path / "state"
    state.mkdir()
    if what != "new-store-in-state-dir":
        Store.in_state_dir(state).close()
    ro = state / "kbot.sqlite3" if what == "store" else state
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(f'schema = 1\n[bot]\nstate_dir = "{state}"\n')
    assert BWRAP is not None
    res = subprocess.run(  # noqa: S603 - the CLI as a user runs it, under a read-only mount
        [BWRAP, "--dev-bind", "/", "/", "--ro-bind", str(ro), str(ro),
         sys.executable, "-m", "bot.cli", "-c", str(cfg), "outbox", "list"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith(f"kbot: error: store {state}/kbot.sqlite3 ")
    assert any(w in lines[0] for w in ("is read-only", "cannot be opened")), lines[0]


def test_garbage_store_on_the_cli_is_one_line_and_exit_3(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "kbot.sqlite3").write_bytes(b"\x00garbage" * 700)
    cfg = tmp_path / "kbot.toml"
    cfg.write_text(f'schema = 1\n[bot]\nstate_dir = "{state}"\n')
    res = subprocess.run(  # noqa: S603 - the CLI as a user runs it
        [sys.executable, "-m", "bot.cli", "-c", str(cfg), "outbox", "list"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 3, res.stderr
    assert res.stderr == (f"kbot: error: store {state}/kbot.sqlite3 is not a kbot store "
                          "(file is not a database)\n")


def test_a_new_store_opened_by_many_at_once_is_migrated_once(tmp_path: Path) -> None:
    """`kbot serve` opens one connection per thread: a fresh store must not be created twice
    ("table messages already exists") nor be taken for another program's database."""
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_it() -> None:
        barrier.wait()
        try:
            with Store.in_state_dir(tmp_path / "state") as store:
                assert store.schema_version == len(MIGRATIONS)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
