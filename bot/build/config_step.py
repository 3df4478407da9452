"""The config step: the effective .config of a tree, and which requested options it lost.

The base config (tinyconfig, ...) plus the kconfig fragments (merge_config.sh -m) plus
olddefconfig, computed in the slot's scratch `cfg/` so that the reused `out/.config` — and with
it the whole incremental build — only changes when the effective config does. It is computed
again only when a change between two commits can change it (Kconfig files, scripts/, the
defconfigs, the top Makefile).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.build.progress import ProgressFn
from bot.build.slot import SlotState
from bot.build.steps import StepFailed, StepRunner, classify
from bot.errors import InfraError
from bot.tree import git

_FRAG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_FRAG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Fragment:
    path: Path
    text: str

    def requested(self) -> dict[str, str | None]:
        """CONFIG_X -> value, None for `# CONFIG_X is not set`."""
        out: dict[str, str | None] = {}
        for raw in self.text.splitlines():
            line = raw.strip()
            if m := _FRAG_SET.match(line):
                out[m[1]] = m[2]
            elif m := _FRAG_UNSET.match(line):
                out[m[1]] = None
        return out


def read_config_values(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if m := _FRAG_SET.match(line):
            out[m[1]] = m[2]
    return out


def dropped_options(fragments: Sequence[Fragment], config_text: str) -> tuple[str, ...]:
    """Requested options the effective config does not have, as `CONFIG_X=y (got n)`."""
    have = read_config_values(config_text)
    lost: list[str] = []
    for frag in fragments:
        for name, want in frag.requested().items():
            got = have.get(name)
            if got != want:
                shown = f"{name}={want}" if want is not None else f"{name} unset"
                lost.append(f"{shown} (got {got if got is not None else 'unset'})")
    return tuple(dict.fromkeys(lost))


# A change to one of these can change the effective config; anything else cannot.
CONFIG_INPUT_DIRS = ("scripts/", "arch/x86/configs/", "kernel/configs/", "arch/x86/Makefile")


def config_inputs_same(src: Path, old: str, new: str, cfg: Path) -> bool:
    """True when cfg/.config, computed for `old`, is also the effective config of `new`."""
    if not old or not (cfg / ".config").is_file():
        return False
    if old == new:
        return True
    try:
        changed = git.changed_files(src, old, new)
    except InfraError:
        return False
    return not any(
        f == "Makefile" or f.startswith(CONFIG_INPUT_DIRS) or Path(f).name.startswith("Kconfig")
        for f in changed
    )


def compute_config(
    steps: StepRunner, src: Path, cfg: Path, common: Sequence[str], base_config: str,
    fragments: Sequence[Fragment],
) -> None:
    """base config + fragments (merge_config.sh -m) + olddefconfig, in the scratch O=."""
    argvs: list[list[str]] = [
        ["make", f"O={cfg}", *common, base_config],
        ["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", str(cfg),
         str(cfg / ".config"), *(str(f.path) for f in fragments)],
        ["make", f"O={cfg}", *common, "olddefconfig"],
    ]
    for argv in argvs:
        res = steps.run(argv, cwd=src)
        if not res.ok:
            raise StepFailed(*classify("config", res, ()))


def config_step(
    steps: StepRunner, src: Path, cfg: Path, out: Path, state: SlotState, sha: str,
    common: Sequence[str], base_config: str, fragments: Sequence[Fragment], on_line: ProgressFn,
) -> tuple[str, ...]:
    """Make `out/.config` the effective config of `sha` (rewritten only when it differs);
    returns the requested options it dropped. Raises StepFailed."""
    if not config_inputs_same(src, state.config_rev, sha, cfg):
        state.config_rev = ""
        compute_config(steps, src, cfg, common, base_config, fragments)
    state.config_rev = sha
    config_text = (cfg / ".config").read_text(encoding="utf-8", errors="replace")
    dropped = dropped_options(fragments, config_text)
    if dropped:
        on_line("config: requested options dropped: " + ", ".join(dropped))
    old = out / ".config"
    if not old.is_file() or old.read_text(errors="replace") != config_text:
        shutil.copyfile(cfg / ".config", old)
    return dropped
