"""Shared pytest setup. Each stage owns one fixture module under tests/fixtures/."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real kvm-list seed thread ships with the project (the demo serves it too).
SEED_MBOX = REPO_ROOT / "configs" / "demo" / "kvm-evmcs-v1-2021-05-03.mbox"


@pytest.fixture(scope="session")
def seed_mbox() -> Path:
    assert SEED_MBOX.is_file(), f"seed thread missing from the project: {SEED_MBOX}"
    return SEED_MBOX


@pytest.fixture(autouse=True)
def _isolated_kbot_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the real state dir. The cache dir (kernel tree, ccache, builds) is
    shared on purpose: the real tier reuses one cold kernel build."""
    monkeypatch.setenv("KBOT_STATE_DIR", str(tmp_path / "state"))
    # Config layers of whoever runs the tests (~/.config/kbot, $KBOT_CONFIG) stay out.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("KBOT_CONFIG", raising=False)

pytest_plugins = [
    "tests.fixtures.kernel",  # kernel source, the one shared base build, variant builds
    "tests.fixtures.public_inbox",  # a real public-inbox-httpd on loopback
    "tests.fixtures.smtp",  # a real SMTP server (aiosmtpd) on loopback
]
