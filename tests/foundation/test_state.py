"""The store: migrations, restart safety, idempotent inserts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.errors import InfraError
from bot.state import MIGRATIONS, Store


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
