"""The recorded pipeline output (tests/report/recorded/, `python -m tests.report.record`)
still fits today's code: each job's results.json loads into SeriesJobResult with bot.codec,
its reports.json into report contexts, and today's mapping (bot.pipeline.report.contexts)
makes the very contexts that were recorded from those results. So the goldens, the data
they render from and the code that makes that data cannot drift apart: a change to any of
them fails here until the recording is made again."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from bot import codec
from bot.pipeline.report import contexts
from bot.pipeline.series_job import SeriesJobResult
from bot.report.context import BuildFailureReport, ReportContext, context_from_json, to_json
from tests.report.helpers import RECORDED, world_config

JOBS = sorted(p.name for p in (RECORDED / "jobs").iterdir())


def _load(job: str) -> tuple[SeriesJobResult, list[ReportContext], list[object]]:
    results = json.loads((RECORDED / "jobs" / job / "results.json").read_text())
    reports = json.loads((RECORDED / "jobs" / job / "reports.json").read_text())
    result = codec.load(SeriesJobResult, results, f"{job}/results.json")
    return result, [context_from_json(r, f"{job}/reports.json") for r in reports], reports


def _no_excerpts(ctx: ReportContext) -> ReportContext:
    """Source excerpts come from the tree (git show), which the recording does not keep."""
    if isinstance(ctx, BuildFailureReport):
        return dataclasses.replace(ctx, errors=tuple(
            dataclasses.replace(e, excerpt=()) for e in ctx.errors))
    return ctx


def test_every_series_of_the_world_is_recorded() -> None:
    assert JOBS == ["clean", "conflict", "nobuild", "regress", "warn"]


@pytest.mark.parametrize("job", JOBS)
def test_recorded_results_load_into_todays_types(job: str) -> None:
    result, ctxs, raw = _load(job)
    results = json.loads((RECORDED / "jobs" / job / "results.json").read_text())
    assert codec.dump(result) == results  # nothing dropped or added on the way
    assert [to_json(c) for c in ctxs] == raw
    assert ctxs, f"{job}: no report recorded"


@pytest.mark.parametrize("job", JOBS)
def test_todays_mapping_makes_the_recorded_reports(job: str, tmp_path: Path) -> None:
    result, recorded, _ = _load(job)
    ids = {int(m) for c in recorded
           for m in re.findall(r"/jobs/(\d+)/", c.reproduce.script_url)}
    assert len(ids) == 1, ids
    made = contexts(world_config(tmp_path), result, ids.pop(), series_summary="always")
    assert [_no_excerpts(c) for c in made] == [_no_excerpts(c) for c in recorded]
    for c in recorded:
        if isinstance(c, BuildFailureReport):
            assert any(e.excerpt for e in c.errors)  # the recording did have them
