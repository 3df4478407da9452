"""Record the report goldens' data from a real pipeline run, then render the goldens:

    .venv/bin/python -m tests.report.record

Runs the world of tests/report/world.py (the fake kernel tree, series on a real public-inbox,
real apply / sandboxed build / store / reports, only the VM faked): `kbot watch --once
--run-jobs`, then `kbot bisect --test state_test --report` twice (a culprit found and
threaded under its patch mail; an inconclusive one). It keeps what kbot itself wrote:

    tests/report/recorded/jobs/<series>/results.json   the job's SeriesJobResult (bot.codec)
    tests/report/recorded/jobs/<series>/reports.json   its report contexts
    tests/report/recorded/bisections/<name>.json       a bisection's report context
    tests/report/recorded/index.json                   golden name -> (file, report kind)

with two substitutions, so that re-recording changes only what really changed: the loopback
archive's URL becomes https://lore.kernel.org and the temporary folder becomes /kbot-record.
Then each golden, tests/report/golden/<name>.eml, is rendered from its recorded context
(tests/report/helpers.render_golden: what test_render compares with). Review the diff.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from bot.intake.local_inbox import LocalInbox
from tests.report.helpers import GOLDEN, RECORDED, load_result, render_golden
from tests.report.world import make_world, run_kbot

LORE = "https://lore.kernel.org"
ROOT_PLACEHOLDER = "/kbot-record"
REPORT_LINES = ('series_summary = "always"\n'
                'artifacts_url = "https://kbot.example.org/kbot"\n')
# golden name -> (series, report kind) for jobs; bisections are named by their folder.
JOB_GOLDENS = {
    "regression": ("regress", "regression"),
    "series": ("regress", "series"),
    "series-clean": ("clean", "series"),
    "build-failure": ("nobuild", "build-failure"),
    "regression-splat": ("warn", "regression"),
    "apply-failure": ("conflict", "apply-failure"),
}


def _clean(text: str, root: Path, inbox_url: str) -> str:
    return text.replace(inbox_url, LORE).replace(str(root), ROOT_PLACEHOLDER)


def record(out: Path = RECORDED) -> dict[str, tuple[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="kbot-record-"))
    inbox = LocalInbox(root / "public-inbox", ("kvm",))
    inbox.start()
    try:
        world = make_world(root / "world", inbox, report=REPORT_LINES)
        state = root / "state"
        res = run_kbot(world, state, ["watch", "--once", "--run-jobs"])
        if res.returncode != 0:
            raise SystemExit(f"kbot watch failed: {res.describe()}")
        bisections = {
            "bisection": "series-regress",
            "bisection-inconclusive": "bisect-skip",
        }
        for bad in bisections.values():
            res = run_kbot(world, state, ["bisect", "--tree", str(world.repo), "--good",
                                          world.base, "--bad", bad, "--test", "state_test",
                                          "--report"])
            if res.returncode != 1:  # 1: found (or inconclusive), as kbot bisect says
                raise SystemExit(f"kbot bisect failed: {res.describe()}")
        shutil.rmtree(out, ignore_errors=True)
        index: dict[str, tuple[str, str]] = {}
        for job in sorted((state / "jobs").iterdir(), key=lambda p: int(p.name)):
            reports = json.loads((job / "reports.json").read_text(encoding="utf-8"))
            results = json.loads((job / "results.json").read_text(encoding="utf-8"))
            title = results["series"]["title"]  # "KVM: <series> series"
            name = title.split()[1]
            dest = out / "jobs" / name
            dest.mkdir(parents=True)
            for f in ("results.json", "reports.json"):
                text = (job / f).read_text(encoding="utf-8")
                (dest / f).write_text(_clean(text, root, world.inbox_url), encoding="utf-8")
            kinds = [r["kind"] for r in reports]
            for golden, (series, kind) in JOB_GOLDENS.items():
                if series == name and kind in kinds:
                    index[golden] = (f"jobs/{name}/reports.json", kind)
        for golden, bad in bisections.items():
            folders = sorted((state / "bisections").glob("*-state_test"))
            sha = _sha(world.repo, bad, golden)
            found = [f for f in folders if f.name.startswith(sha[:12])]
            if len(found) != 1:
                raise SystemExit(f"no bisection folder for {golden} ({sha[:12]}) in {folders}")
            dest = out / "bisections" / f"{golden}.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = (found[0] / "report.json").read_text(encoding="utf-8")
            dest.write_text(_clean(text, root, world.inbox_url), encoding="utf-8")
            index[golden] = (f"bisections/{golden}.json", "bisection")
        missing = (set(JOB_GOLDENS) | set(bisections)) - set(index)
        if missing:
            raise SystemExit(f"the run made no report for: {', '.join(sorted(missing))}")
        (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n",
                                        encoding="utf-8")
        return index
    finally:
        inbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def _sha(repo: Path, rev: str, golden: str) -> str:
    """The commit a bisection's folder is named by: the culprit, else the bad end."""
    from tests.build.fake_kernel import git

    if golden == "bisection":  # the culprit: regress' patch 2, the branch's second commit
        return git(repo, "rev-parse", f"{rev}~1")
    return git(repo, "rev-parse", rev)


def main() -> int:
    index = record()
    GOLDEN.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(index):
            (GOLDEN / f"{name}.eml").write_bytes(render_golden(load_result(name), Path(tmp)))
    print(f"recorded {len(index)} report(s) into {RECORDED}; goldens in {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
