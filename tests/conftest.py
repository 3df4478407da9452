"""Shared pytest setup. Each stage owns one fixture module under tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("KBOT_SHARED_DIR", REPO_ROOT.parent / "shared"))
SEED_MBOX = SHARED / "fixtures" / "lore" / "kvm-evmcs-v1-2021-05-03.mbox"


@pytest.fixture(scope="session")
def seed_mbox() -> Path:
    assert SEED_MBOX.is_file(), f"shared seed thread missing: {SEED_MBOX}"
    return SEED_MBOX


@pytest.fixture(autouse=True)
def _isolated_kbot_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the real state dir. The cache dir (kernel tree, ccache, builds) is
    shared on purpose: the real tier reuses one cold kernel build."""
    monkeypatch.setenv("KBOT_STATE_DIR", str(tmp_path / "state"))

pytest_plugins = [
    "tests.fixtures.kernel",  # kernel source, the one shared base build, variant builds
    "tests.fixtures.public_inbox",  # a real public-inbox-httpd on loopback
    "tests.fixtures.smtp",  # a real SMTP server (aiosmtpd) on loopback
]
