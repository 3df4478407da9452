"""The artifact store holds facts about trees (PASS, FAIL), never "could not build"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.build.store import ArtifactStore


def test_an_error_is_kept_for_its_log_but_never_served(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "build")
    key = "ab" * 32
    log = tmp_path / "build.log"
    log.write_text("bwrap: setting up uid map: Permission denied\n")
    staging = store.begin(key)
    store.add_file(staging, "build.log", log)
    meta = {"status": "error", "message": "build sandbox did not start"}
    with pytest.raises(ValueError, match="keep_error"):
        store.commit(key, staging, meta)
    kept = store.keep_error(key, staging, meta)
    assert (kept / "build.log").read_text() == log.read_text()
    assert not kept.is_relative_to(store.entries)
    assert store.load(key) is None
    # Even an ERROR written where an entry lives (by an older kbot, by hand) is not served.
    entry = store.entry_dir(key)
    entry.mkdir(parents=True)
    (entry / "result.json").write_text(json.dumps(meta))
    assert store.load(key) is None
    (entry / "result.json").write_text(json.dumps({**meta, "status": "fail"}))
    assert store.load(key) == {**meta, "status": "fail"}
