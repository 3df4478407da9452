"""Web benchmark: how long `kbot web` takes to serve a series page (the patch x test matrix)
from a store with 1,000 series of 50 patches each, every one fully tested.

    .venv/bin/python bench/web.py [--series 1000] [--patches 50] [--requests 300] [--keep DIR]

The store is filled with the values a series job stores (bot/pipeline/series_job.py): an apply
step, a BuildResult per commit (with warnings), one boot per commit running the nested-state
plan's svm set under QEMU TCG (8 TestResults each, via bot.codec), a verdict; one series in ten
regresses at patch 20 and has a second round of boots at four commits. Then the real app runs
under uvicorn on loopback (`serve_web`, as `kbot web` runs it) and GETs are timed from the
client: series pages of random series, plus the series list, a test's history and the jobs
page for reference. Target on this machine: series page p95 < 100 ms. Figures only; nothing
here passes or fails.
"""

from __future__ import annotations

import os
import sys

# bench/bisect.py shadows the stdlib's `bisect`, which `random` (via statistics, tempfile)
# imports: drop this folder from the module path before importing them.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402

from bot import codec  # noqa: E402
from bot.build.diagnostics import Diagnostic, Severity  # noqa: E402
from bot.build.kernel import BuildArtifacts, BuildResult, BuildStatus  # noqa: E402
from bot.config import Config, load_config  # noqa: E402
from bot.state import Store  # noqa: E402
from bot.vm.model import (  # noqa: E402
    Backend,
    GuestInfo,
    Outcome,
    RunStatus,
    TestResult,
    TestRun,
)
from bot.vm.plan import load_plan  # noqa: E402
from bot.web import queries  # noqa: E402
from bot.web.app import Served, create_app, serve_web  # noqa: E402

UA = {"User-Agent": "kbot-bench-web"}
BAD_AT = 20


def _sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest()


def _build(sha: str, parent: str | None, k: int, folder: Path) -> dict[str, object]:
    warn = Diagnostic("arch/x86/kvm/svm/nested.c", 100 + k, 5, Severity.WARNING,
                      "unused variable 'x'", "-Wunused-variable", "arch/x86/kvm/svm/nested.o")
    return BuildResult(
        BuildStatus.PASS, sha, _sha("tree", sha), "cfg", _sha("key", sha), 61.0,
        BuildArtifacts(folder / "bzImage", folder / "selftests", folder / "config",
                       folder / "build.log"),
        diagnostics=(warn,) * 3, new_warnings=(warn,) if k % 7 == 3 else (),
        parent_rev=parent, selftests=("x86_64/state_test",), toolchain="gcc 12.2",
    ).to_json()


def _boot(tests: tuple[str, ...], fail: bool, folder: Path) -> list[object]:
    results = tuple(TestResult(
        name, 1, Outcome.FAIL if fail and name == "state_test" else Outcome.PASS,
        1 if fail and name == "state_test" else 0, 2.5,
        output=(f"# {name}", "TAP version 13", "1..1", "ok 1 nested state")) for name in tests)
    run = TestRun(
        Backend.QEMU_TCG, "host has no usable KVM: TCG", "nested-state", ("svm",),
        folder / "bzImage", RunStatus.COMPLETED, "init ran every test", results, (),
        GuestInfo("6.1.0-kbot", "AuthenticAMD", svm=True, nested="svm:1", kvm_device=True),
        ("qemu-system-x86_64", "-machine", "q35", "-cpu", "EPYC", "-m", "1024"),
        folder / "console.log", 0, 14.2, 1.3)
    dumped: list[object] = codec.dump((run,))
    return dumped


def fill(store: Store, n_series: int, n_patches: int, root: Path) -> None:
    """n_series fully tested series of n_patches each, stored as series jobs store them."""
    store.db.execute("PRAGMA synchronous=OFF")  # a bench fill: no fsync per row
    plan = load_plan("nested-state")
    tests = tuple(t.name for s in plan.sets if s.name == "svm" for t in s.tests)
    folder = root / "artifacts"
    for i in range(n_series):
        regress = i % 10 == 9
        patches = [{"index": k, "total": n_patches, "subject": f"[PATCH {k}/{n_patches}] KVM: "
                    f"nSVM: change {k} of series {i}", "author": "Ada Hacker <ada@example.org>",
                    "message_id": f"s{i}-{k}@example.org", "files": ["arch/x86/kvm/svm/nested.c"]}
                   for k in range(1, n_patches + 1)]
        sid = store.upsert_series(f"s{i}@example.org#v1", "kvm", title=f"KVM: nSVM: series {i}",
                                  version=1, complete=True,
                                  data={"title": f"KVM: nSVM: series {i}", "patches": patches,
                                        "total": n_patches, "version": 1})
        store.set_series_state(sid, "ready")
        job = store.add_job(sid, "test-series", {"key": f"s{i}@example.org#v1"})
        shas = [_sha(i, k) for k in range(n_patches + 1)]
        store.put_step(job, "apply", "apply", "applied", commit_sha=shas[0], data={
            "summary": f"base kvm {shas[0][:12]}: {n_patches} patch(es) applied",
            "base": f"kvm {shas[0][:12]}", "failed_index": None, "conflicts": [],
            "git_message": "", "commits": [{"index": k, "sha": shas[k],
                                            "title": f"KVM: nSVM: change {k} of series {i}"}
                                           for k in range(1, n_patches + 1)]})
        for k, sha in enumerate(shas):
            store.put_step(job, f"build:{sha}", "build", "pass", commit_sha=sha,
                           data=_build(sha, shas[k - 1] if k else None, k, folder))
        for k, sha in enumerate(shas):
            fail = regress and k >= BAD_AT
            store.put_step(job, f"boot:{sha}:nested-state:auto:r1", "vmtest", "completed",
                           commit_sha=sha, data=_boot(tests, fail, folder))
        if regress:
            for k in (BAD_AT - 2, BAD_AT - 1, BAD_AT, BAD_AT + 1):
                store.put_step(job, f"boot:{shas[k]}:nested-state:auto:r2", "vmtest",
                               "completed", commit_sha=shas[k],
                               data=_boot(tests, k >= BAD_AT, folder))
        verdict_tests = []
        for name in ("boot", *tests):
            bad = regress and name == "state_test"
            runs = {BAD_AT - 2, BAD_AT - 1, BAD_AT, BAD_AT + 1} if regress else set()
            n_runs = [2 if k in runs else 1 for k in range(n_patches + 1)]
            cols = [f"{n if bad and k >= BAD_AT else 0}:{n}" for k, n in enumerate(n_runs)]
            verdict_tests.append({"test": f"{name} [qemu-tcg]", "kind": "new" if bad else "pass",
                                  "base": cols[0], "patches": cols[1:],
                                  "first_bad_patch": BAD_AT if bad else None,
                                  "confidence": 1.0 if bad else 0.0, "note": ""})
        store.put_step(job, "verdict", "verdict", "regressed" if regress else "ok", data={
            "first_bad_patch": BAD_AT if regress else None, "tests": verdict_tests})
        store.set_job_state(job, "done")


def _stats(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return (f"{name:<28} n={len(ms):4d}  p50 {statistics.median(ms):7.1f} ms  "
            f"p95 {p95:7.1f} ms  p99 {p99:7.1f} ms  max {ms[-1]:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--patches", type=int, default=50)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--keep", type=Path, default=None,
                    help="fill (or reuse) the store in this folder and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="kbot-bench-web-"))
    state = root / "state"
    try:
        config: Config = load_config(None)
        config = dataclasses.replace(config, bot=dataclasses.replace(config.bot,
                                                                     state_dir=str(state)))
        with Store.in_state_dir(state) as store:
            have = len(store.all_series())
            if have != args.series:
                if have:
                    raise SystemExit(f"{state} holds {have} series, not {args.series}")
                t0 = time.perf_counter()
                fill(store, args.series, args.patches, root)
                print(f"filled {args.series} series x {args.patches} patches in "
                      f"{time.perf_counter() - t0:.1f} s")
            rows = store.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            ids = [s.id for s in store.all_series()]
            # In-process split of one series page: the store + matrix, then the template.
            sid = ids[len(ids) // 2]
            t0 = time.perf_counter()
            for _ in range(20):
                page = queries.series_page(store, sid)
            t_query = (time.perf_counter() - t0) / 20
        size = (state / "kbot.sqlite3").stat().st_size
        print(f"store: {len(ids)} series, {rows} result rows, {size / 2**20:.0f} MiB")
        env = create_app(config).state.web.env
        t0 = time.perf_counter()
        for _ in range(20):
            html = env.get_template("series.html.j2").render(
                nav="series", page=page, web_url="")
        t_render = (time.perf_counter() - t0) / 20
        print(f"one series page in process: matrix from the store {t_query * 1000:.1f} ms, "
              f"template {t_render * 1000:.1f} ms, {len(html) / 1024:.0f} KiB of HTML")

        stop = threading.Event()
        served: list[Served] = []
        up = threading.Event()
        thread = threading.Thread(target=serve_web, args=(config, "127.0.0.1", 0, stop),
                                  kwargs={"ready": lambda s: (served.append(s), up.set())},
                                  daemon=True)
        thread.start()
        if not up.wait(60):
            raise SystemExit("kbot web did not start")
        base = served[0].url
        session = requests.Session()
        rnd = random.Random(1)

        def timed(path: str) -> float:
            t = time.perf_counter()
            r = session.get(base + path, timeout=30, headers=UA)
            dt = time.perf_counter() - t
            if r.status_code != 200:
                raise SystemExit(f"{path}: {r.status_code}")
            return dt

        for _ in range(20):  # warm-up: worker threads, their store connections, page cache
            timed(f"/series/{rnd.choice(ids)}")
        series = [timed(f"/series/{rnd.choice(ids)}") for _ in range(args.requests)]
        others = {
            "series list (page 1)": [timed("/") for _ in range(50)],
            "series list, outcome filter": [timed("/?outcome=regressed") for _ in range(50)],
            "test history (state_test)": [timed("/tests/history?name=state_test+%5Bqemu-tcg%5D")
                                          for _ in range(20)],
            "jobs": [timed("/jobs") for _ in range(50)],
        }
        stop.set()
        thread.join(30)
        print(_stats(f"series page ({args.patches} patches)", series))
        for name, samples in others.items():
            print(_stats(name, samples))
        ms = sorted(series)
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))] * 1000
        print(f"target: series page p95 < 100 ms: {'met' if p95 < 100 else 'NOT met'} "
              f"({p95:.1f} ms)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
