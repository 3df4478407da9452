"""Content-addressed artifact store: one entry per (tree id, effective config, toolchain).

An entry is a directory `artifacts/<key[:2]>/<key>/` with `result.json` written last (its presence
is what makes the entry valid, so an interrupted store leaves nothing half-valid behind). Files
are hard links into `blobs/<sha256>`, so the hundred-odd static selftest binaries that do not
change between two commits take their space once.
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


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.entries = root / "artifacts"

    def entry_dir(self, key: str) -> Path:
        return self.entries / key[:2] / key

    def load(self, key: str) -> dict[str, Any] | None:
        meta = self.entry_dir(key) / "result.json"
        try:
            data: dict[str, Any] = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
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
        (staging / "result.json").write_text(
            json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8"
        )
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def abort(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
