"""Fault benchmark: inject faults in bulk on real parts and count what kbot lost or repeated.

    .venv/bin/python bench/faults.py                 # every class (about 5 minutes on 2 cores)
    .venv/bin/python bench/faults.py --watch 60 --seed 7 --skip-smtp

Three suites, each on real parts (tests/faults/):

- watch: a real public-inbox behind a fault proxy; `kbot watch --once` SIGKILLed at a random
  request of its poll (or a little after it), or the archive answering 503 part-way through the
  thread fetches; then healthy polls. Counts series lost and duplicate jobs.
- smtp: a scripted SMTP server answering every reply class at every stage, dropping the
  connection before/after the final dot, stalling; and kbot SIGKILLed at each delivery hook.
  Counts reports lost and delivered twice.
- pipeline: `kbot watch --once --run-jobs` SIGKILLed at each pipeline failpoint (apply, each
  build, each boot, after judging, while reporting), then restarted. Counts series lost,
  duplicate or unfinished jobs, reports lost and delivered twice.

Prints one row per fault class and a total. The target: at least 200 faults, 0 lost, 0 twice.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.table import columns  # noqa: E402
from tests.faults import pipeline_world, scenarios, smtp_faults  # noqa: E402


@dataclass
class Row:
    faults: int = 0
    scenarios: int = 0
    series_lost: int = 0
    duplicate_jobs: int = 0
    reports_lost: int = 0
    duplicate_reports: int = 0
    held: int = 0
    failing: list[str] = field(default_factory=list)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--watch", type=int, default=40, help="watch scenarios (kill / 503)")
    ap.add_argument("--series", type=int, default=40, help="series in the watch archive")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-watch", action="store_true")
    ap.add_argument("--skip-smtp", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    args = ap.parse_args()
    rows: dict[str, Row] = collections.defaultdict(Row)
    began = time.monotonic()
    if not args.skip_watch:
        t = time.monotonic()
        for w in scenarios.run_watch_scenarios(args.watch, args.seed, series=args.series):
            row = rows[f"watch: {w.kind.value}"]
            row.scenarios += 1
            row.faults += w.faults_injected
            row.series_lost += w.series_lost + w.partial
            row.duplicate_jobs += w.duplicate_jobs
            if not w.ok:
                row.failing.append(w.name)
        print(f"watch: {args.watch} scenarios in {time.monotonic() - t:.0f} s", file=sys.stderr)
    if not args.skip_smtp:
        t = time.monotonic()
        for s in smtp_faults.run_smtp_scenarios():
            row = rows[f"smtp: {s.fault_class}"]
            row.scenarios += 1
            row.faults += s.faults_injected
            row.reports_lost += s.lost
            row.duplicate_reports += s.duplicate_deliveries
            row.held += s.held
            if s.violations:
                row.failing.append(s.name)
        print(f"smtp: done in {time.monotonic() - t:.0f} s", file=sys.stderr)
    if not args.skip_pipeline:
        t = time.monotonic()
        for p in pipeline_world.run_pipeline_scenarios():
            row = rows[f"pipeline: {p.fault_class}"]
            row.scenarios += 1
            row.faults += p.faults
            row.series_lost += p.series_lost
            row.duplicate_jobs += p.duplicate_jobs
            row.reports_lost += p.reports_lost
            row.duplicate_reports += p.duplicate_reports
            row.held += p.held
            if not p.ok:
                row.failing.append(p.fault_class)
        print(f"pipeline: done in {time.monotonic() - t:.0f} s", file=sys.stderr)
    table = [("fault class", "scenarios", "faults", "series lost", "dup jobs", "reports lost",
              "dup reports", "held")]
    total = Row()
    for name in sorted(rows):
        r = rows[name]
        table.append((name, str(r.scenarios), str(r.faults), str(r.series_lost),
                      str(r.duplicate_jobs), str(r.reports_lost), str(r.duplicate_reports),
                      str(r.held)))
        for attr in ("scenarios", "faults", "series_lost", "duplicate_jobs", "reports_lost",
                     "duplicate_reports", "held"):
            setattr(total, attr, getattr(total, attr) + getattr(r, attr))
        total.failing += r.failing
    table.append(("TOTAL", str(total.scenarios), str(total.faults), str(total.series_lost),
                  str(total.duplicate_jobs), str(total.reports_lost),
                  str(total.duplicate_reports), str(total.held)))
    print("\n".join(columns(table)))
    print(f"\n{time.monotonic() - began:.0f} s in all")
    if total.failing:
        print("scenarios that broke an invariant: " + ", ".join(total.failing[:20]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
