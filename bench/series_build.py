"""Per-patch incremental builds of a 4-patch series against cold builds, and the artifact store.

    .venv/bin/python bench/series_build.py [--cold N] [--keep]

On Debian's linux-source-6.1 (imported once under the cache dir), with the default config
(tinyconfig + configs/kconfig/kvm-nested.config, bzImage + static KVM selftests):

1. a fresh 4-patch series touching arch/x86/kvm/ (new trees every run: a run id in a comment),
   built c1..c4 in order in the reused build slot after the base (the base build itself is
   served from the store or built first and not counted);
2. N of the same commits (default 4) built cold: a fresh slot (new worktree, empty O= dir) in
   a scratch cache dir, ccache off: what a bot without incremental builds pays per patch;
3. the series again: every result must come from the artifact store.

Prints per-commit times and the ratio cold/incremental measured in this run. With N < 4 the
cold total is N measured builds scaled to 4, and the table says so. Nothing passes or fails.
Takes the machine for (N x ~5) minutes: run it under `flock /var/tmp/kbot-heavy.lock`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bot.build.kernel import BuildResult, KernelBuilder  # noqa: E402
from bot.build.series import build_commits  # noqa: E402
from bot.config import default_cache_dir, load_config  # noqa: E402
from bot.tree.edit import commit_edits  # noqa: E402
from bot.tree.kernel_source import ensure_kernel_source  # noqa: E402

EDITS = (
    ("arch/x86/kvm/vmx/nested.c", "\t/* Check for memory type validity */\n", "KVM: nVMX"),
    ("arch/x86/kvm/svm/nested.c", "int nested_svm_vmrun(struct kvm_vcpu *vcpu)\n{\n", "KVM: nSVM"),
    ("arch/x86/kvm/x86.c", "int kvm_arch_init(void *opaque)\n{\n", "KVM: x86"),
    ("arch/x86/kvm/lapic.c", "void kvm_lapic_reset(struct kvm_vcpu *vcpu, bool init_event)\n{\n",
     "KVM: x86: lapic"),
)


def log(msg: str) -> None:
    print(f"bench/series_build: {msg}", file=sys.stderr, flush=True)


def quiet(_line: str) -> None:
    pass


def make_series(repo: Path, base: str, run_id: str) -> list[str]:
    shas = [base]
    for i, (path, anchor, tag) in enumerate(EDITS, 1):
        edit = (anchor, anchor + f"\t/* kbot bench {run_id} patch {i} */\n")
        shas.append(commit_edits(repo, shas[-1], {path: edit},
                                 f"{tag}: bench patch {i} ({run_id})"))
    return shas


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", type=int, default=4, help="cold builds to measure (0-4)")
    ap.add_argument("--keep", action="store_true", help="keep the cold builds' scratch dir")
    args = ap.parse_args()
    config = load_config()
    cache = default_cache_dir()
    src = ensure_kernel_source(cache)
    frags = [config.resolve(f) for f in config.build.fragments]
    builder = KernelBuilder(cache, config.build, frags)
    log(f"base {src.base_sha[:12]} (Linux {src.version}), {builder.jobs} jobs")
    base = builder.build(src.path, src.base_sha)
    log(f"base: {base.summary()}")
    run_id = time.strftime("%Y%m%dT%H%M%S")
    shas = make_series(src.path, src.base_sha, run_id)

    log("incremental: c1..c4 in the reused build slot")
    inc = build_commits(builder, src.path, shas)[1:]
    inc_total = sum(r.build_seconds for r in inc)

    cold: list[BuildResult] = []
    scratch = Path(tempfile.mkdtemp(prefix="kbot-bench-cold-", dir="/var/tmp"))
    for i, sha in enumerate(shas[1:1 + args.cold], 1):
        log(f"cold build {i}/{args.cold}: fresh worktree and O= dir, ccache off")
        cold_builder = KernelBuilder(scratch / f"c{i}", config.build, frags, ccache=False)
        cold.append(cold_builder.build(src.path, sha))
        cold_builder.remove_slot(src.path)

    log("second run of the series")
    t0 = time.monotonic()
    again = build_commits(builder, src.path, shas)
    again_s = time.monotonic() - t0

    print(f"\nSeries of {len(inc)} patches on Linux {src.version}, run {run_id}, "
          f"{builder.jobs} CPUs, config {builder.config_fingerprint}")
    print(f"{'commit':14} {'incremental':>12} {'cold':>10}  status")
    for i, r in enumerate(inc):
        c = f"{cold[i].build_seconds:9.1f}s" if i < len(cold) else "         -"
        print(f"c{i + 1} {r.rev[:10]:11} {r.build_seconds:11.1f}s {c}  {r.status.value}")
    print(f"{'total':14} {inc_total:11.1f}s", end="")
    if cold:
        cold_total = sum(r.build_seconds for r in cold)
        scaled = cold_total * len(inc) / len(cold)
        note = "" if len(cold) == len(inc) else f" ({len(cold)} measured, scaled to {len(inc)})"
        print(f" {scaled:9.1f}s{note}")
        print(f"\ncold / incremental: {scaled / inc_total:.1f}x (target >= 5x)")
    else:
        print()
    cached = sum(r.cached for r in again)
    print(f"second run: {again_s:.2f}s for {len(again)} commits, {cached} from the artifact "
          f"store (target < 5 s)")
    if not args.keep:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
