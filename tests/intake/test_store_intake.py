"""The store's side of crash-safe watching: intake stages, series identity, settling."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from bot.state import (
    INTAKE_ASSEMBLE,
    INTAKE_DONE,
    MIGRATIONS,
    JobChange,
    Store,
)


def _series_data(cover: str | None, *patches: str) -> dict[str, object]:
    return {"cover": {"message_id": cover} if cover else None,
            "patches": [{"message_id": p, "index": i} for i, p in enumerate(patches, 1)]}


def test_migration_3_backfills_series_mail_and_reopens_waiting_series(tmp_path: Path) -> None:
    path = tmp_path / "kbot.sqlite3"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        for stmt in script.split(";"):
            if stmt.strip():
                db.execute(stmt)
    db.execute("PRAGMA user_version=2")
    for msgid in ("c@x", "p1@x", "p2@x", "w1@x", "other@x"):
        db.execute("INSERT INTO messages (msgid, list, seen_at, raw) VALUES (?, 'kvm', 0, x'00')",
                   (msgid,))
    for key, state, data in (("c@x#v1", "ready", _series_data("c@x", "p1@x", "p2@x")),
                             ("w1@x#v1", "pending", _series_data(None, "w1@x"))):
        db.execute("INSERT INTO series (key, list, title, version, complete, state, first_seen,"
                   " updated_at, data) VALUES (?, 'kvm', 't', 1, 1, ?, 0, 0, ?)",
                   (key, state, json.dumps(data)))
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version >= 3
        ready = store.series_by_key("c@x#v1")
        waiting = store.series_by_key("w1@x#v1")
        assert ready is not None and waiting is not None
        assert store.series_holding(["p2@x"]) == [ready.id]
        assert store.series_holding(["c@x", "w1@x"]) == [ready.id, waiting.id]
        # The waiting series is assembled again by the next poll; settled mail is not.
        assert [m.msgid for m in store.messages_in_intake("kvm", INTAKE_ASSEMBLE)] == ["w1@x"]
        assert store.get_message("other@x").intake == INTAKE_DONE  # type: ignore[union-attr]


def test_a_series_keeps_its_row_and_job_when_its_key_moves(tmp_path: Path) -> None:
    with Store.in_state_dir(tmp_path) as store:
        sid = store.save_series(None, key="p1@x#v1", list_name="kvm", title="t", version=1,
                                complete=True, data=_series_data(None, "p1@x"),
                                msgids=["p1@x"])
        job = store.settle_series(sid, assembled=["p1@x"], change=JobChange.CREATE,
                                  kind="test-series", detail={"n": 1})
        assert job.created and job.applied
        again = store.save_series(sid, key="c@x#v1", list_name="kvm", title="t", version=1,
                                  complete=True, data=_series_data("c@x", "p1@x"),
                                  msgids=["c@x", "p1@x"])
        assert again == sid
        row = store.get_series(sid)
        assert row is not None and row.key == "c@x#v1" and row.state == "ready"
        assert store.series_holding(["c@x"]) == [sid]
        # A key another row has already is not taken (no UNIQUE failure mid-poll).
        other = store.save_series(None, key="o@x#v1", list_name="kvm", title="o", version=1,
                                  complete=True, data={}, msgids=["o@x"])
        store.save_series(sid, key="o@x#v1", list_name="kvm", title="t", version=1,
                          complete=True, data={}, msgids=["c@x", "p1@x"])
        assert store.get_series(sid).key == "c@x#v1"  # type: ignore[union-attr]
        assert store.get_series(other).key == "o@x#v1"  # type: ignore[union-attr]
        assert len(store.jobs()) == 1


def test_settling_is_one_transaction_that_backs_off_when_the_job_moved(tmp_path: Path) -> None:
    with Store.in_state_dir(tmp_path) as store:
        for m in ("a@x", "b@x"):
            store.add_message(m, "kvm", raw=b"x", intake=INTAKE_ASSEMBLE, thread="a@x")
        sid = store.save_series(None, key="a@x#v1", list_name="kvm", title="t", version=1,
                                complete=False, data={}, msgids=["a@x"])
        created = store.settle_series(sid, assembled=["a@x"], change=JobChange.CREATE,
                                      kind="test-series", detail={"patches": ["1:x"]})
        assert created.job_id is not None
        assert [m.msgid for m in store.messages_in_intake("kvm", INTAKE_ASSEMBLE)] == ["b@x"]
        # The runner started it: a "take the fuller view" update must not land, and the mail
        # stays unsettled for the next poll.
        store.set_job_status(created.job_id, "running")
        raced = store.settle_series(sid, assembled=["b@x"], change=JobChange.UPDATE,
                                    kind="test-series", detail={"patches": ["1:x", "2:y"]})
        assert not raced.applied
        assert [m.msgid for m in store.messages_in_intake("kvm", INTAKE_ASSEMBLE)] == ["b@x"]
        store.set_job_status(created.job_id, "done")
        requeued = store.settle_series(sid, assembled=["b@x"], change=JobChange.REQUEUE,
                                       kind="test-series", detail={"patches": ["1:x", "2:y"]})
        assert requeued.applied and requeued.job_id == created.job_id
        (job,) = store.jobs()
        assert job.status == "queued" and job.detail == {"patches": ["1:x", "2:y"]}
        assert store.messages_in_intake("kvm", INTAKE_ASSEMBLE) == []
        assert not store.requeue_job(job.id, {})  # queued already: nothing to requeue
