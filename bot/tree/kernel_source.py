"""Debian's linux-source-6.1 package turned into a git repository, once, under the cache dir.

Tests and the demo need a real kernel tree without reaching kernel.org; the package registry
ships one. The import is a single commit of the pristine tarball, tagged, so every later patch
applies to a known tree id. Users point kbot at their own clones instead.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from bot import proc
from bot.errors import InfraError

DEBIAN_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
IMPORT_TAG = "debian-linux-source-6.1"
REPO_NAME = "linux-6.1"
GIT_IDENTITY = ("-c", "user.name=kbot", "-c", "user.email=kbot@localhost")


@dataclass(frozen=True)
class KernelSource:
    path: Path
    base_sha: str
    version: str


def _git(repo: Path, *args: str, timeout: float = 600.0) -> str:
    res = proc.run(["git", *GIT_IDENTITY, *args], cwd=repo, timeout=timeout, check=True)
    return res.stdout.strip()


def _kernel_version(tree: Path) -> str:
    values: dict[str, str] = {}
    with (tree / "Makefile").open(encoding="utf-8") as fh:
        for _ in range(10):
            line = fh.readline()
            if "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return ".".join(values.get(k, "?") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))


def ensure_kernel_source(cache_dir: Path, tarball: Path = DEBIAN_TARBALL) -> KernelSource:
    """Return the imported tree, importing it first if this cache has none yet."""
    repo = cache_dir / REPO_NAME
    if (repo / ".git").is_dir():
        try:
            sha = _git(repo, "rev-parse", f"{IMPORT_TAG}^{{commit}}")
            return KernelSource(repo, sha, _kernel_version(repo))
        except InfraError:
            shutil.rmtree(repo)  # a half-finished import from an interrupted run
    if not tarball.is_file():
        raise InfraError(
            f"{tarball} not found: install Debian's linux-source-6.1 package "
            "(bash .ci/install-system-packages)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{REPO_NAME}.importing"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    proc.run(["tar", "-xJf", tarball, "-C", staging], timeout=1200, check=True)
    (top,) = [p for p in staging.iterdir() if p.is_dir()]
    version = _kernel_version(top)
    _git(top, "init", "-q", "-b", "master")
    # Debian's top-level .gitignore ends with "/*": without -f nothing would be committed.
    _git(top, "add", "-f", "-A", ".", timeout=1200)
    _git(top, "commit", "-q", "-m", f"Import {tarball.name} (Linux {version})", timeout=1200)
    _git(top, "tag", IMPORT_TAG)
    # No background auto-gc: a detached gc would outlive the command that started it.
    _git(top, "config", "gc.autoDetach", "false")
    top.rename(repo)
    shutil.rmtree(staging)
    sha = _git(repo, "rev-parse", "HEAD")
    return KernelSource(repo, sha, version)
