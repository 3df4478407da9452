"""Every folder of tests/ that holds test files is collected by pytest.

pytest's default `norecursedirs` once dropped tests/build/ without a word; this runs the real
collection (as CI would) and compares it with the test files on disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bot import proc

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_test_folder_is_collected() -> None:
    res = proc.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests"],
        cwd=REPO_ROOT, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    collected = {
        str(Path(line.split("::", 1)[0]).parent)
        for line in res.stdout.splitlines() if line.startswith("tests/") and "::" in line
    }
    on_disk = {
        str(p.parent.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("test_*.py")
    }
    missing = sorted(on_disk - collected)
    assert not missing, f"test folders pytest does not collect: {missing}"
    assert "tests/build" in collected


def test_nothing_reads_the_development_layouts_shared_folder() -> None:
    """A user's clone has no ../shared: the product and its tests carry their own data."""
    needles = ('"shared"', "'shared'", "../shared", "/shared/fixtures", "KBOT_SHARED_DIR")
    offenders = []
    for top in ("bot", "tests", "bench"):
        for path in (REPO_ROOT / top).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(REPO_ROOT)}: {n}" for n in needles if n in text]
    assert not offenders, offenders
    assert (REPO_ROOT / "configs" / "demo" / "kvm-evmcs-v1-2021-05-03.mbox").is_file()
