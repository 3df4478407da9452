"""Content-addressed artifact store: one entry per (tree id, effective config, toolchain).

An entry is a directory `artifacts/<key[:2]>/<key>/` with `result.json` written last (its presence
is what makes the entry valid, so an interrupted store leaves nothing half-valid behind). Files
are hard links into `blobs/<sha256>`, so the hundred-odd static selftest binaries that do not
change between two commits take their space once.

Only facts about a tree are entries: PASS and FAIL. An ERROR (kbot could not build: a timeout,
a sandbox that did not start, a full disk) is kept for its log under `errors/`, outside
`artifacts/`, where `load` never looks: the next request for that tree builds it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

BLOB_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(BLOB_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# The `status` a result.json holds when kbot could not build: never an entry.
ERROR_STATUS = "error"


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.entries = root / "artifacts"
        self.errors = root / "errors"

    def entry_dir(self, key: str) -> Path:
        return self.entries / key[:2] / key

    def load(self, key: str) -> dict[str, Any] | None:
        meta = self.entry_dir(key) / "result.json"
        try:
            data: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("status") == ERROR_STATUS:
            return None  # never serve "could not build" as a result
        return data

    def begin(self, key: str) -> Path:
        """A fresh staging directory for an entry; `commit` moves it in place."""
        self.entries.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.entries))

    def add_file(self, staging: Path, rel: str, src: Path) -> Path:
        """Put `src` into the entry at `rel` (a hard link to its blob)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        digest = _sha256(src)
        blob = self.blobs / digest[:2] / digest
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            tmp = blob.with_name(f".{digest}.{os.getpid()}")
            shutil.copy2(src, tmp)
            os.chmod(tmp, 0o555 if os.access(src, os.X_OK) else 0o444)
            os.replace(tmp, blob)
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, dest)
        return dest

    def commit(self, key: str, staging: Path, meta: dict[str, Any]) -> Path:
        if meta.get("status") == ERROR_STATUS:
            raise ValueError("an infrastructure error is not a build result: use keep_error")
        (staging / "result.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8"
        )
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def keep_error(self, key: str, staging: Path, meta: dict[str, Any]) -> Path:
        """Keep a failed attempt's files (its log) for reading, where `load` never looks; the
        latest attempt per key replaces the previous one."""
        final = self.errors / key[:16]
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        (final / "result.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8"
        )
        return final

    def abort(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
