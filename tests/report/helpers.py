"""Shared bits of the report tests: configs, the recorded results and goldens, the seed series."""

from __future__ import annotations

import json
import mailbox
import re
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bot.config import Config, load_config
from bot.intake.model import Cover, Patch, Person, Series, Trailer
from bot.report.adapt import series_info
from bot.report.context import (
    Assertion,
    Backend,
    BaseChoice,
    BaseInfo,
    Failure,
    RegressionReport,
    ReportContext,
    RunCount,
    Vendor,
    VmSetup,
    context_from_json,
)
from bot.report.deliver import Mode, Reporter
from bot.state import Store

if TYPE_CHECKING:
    from bot.pipeline.series_job import SeriesJobResult

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "recorded"  # written by `python -m tests.report.record`
GOLDEN = HERE / "golden"
FIXED_MSGID = "20261127230000.0123456789ab-kbot@example.org"
DATE = datetime(2026, 11, 27, 23, 0, 0, tzinfo=UTC)
# The identity the recorded world's kbot had (tests/report/world.py).
BOT_EMAIL = "kbot@example.org"
OWNER = "Kbot Owner <owner@example.org>"


def write_config(
    tmp: Path,
    report: str = "",
    bot_email: str = "kbot@kbot.example",
    archive_url: str = "https://lore.kernel.org/kvm/",
    owner: str = "",
) -> Config:
    """A config file whose state dir is under tmp, with extra [report] lines."""
    tmp.mkdir(parents=True, exist_ok=True)
    state = tmp / "state"
    text = (
        "schema = 1\ninherit = false\n"
        f'[bot]\nname = "kbot"\nemail = "{bot_email}"\nstate_dir = "{state}"\n'
        + (f'owner = "{owner}"\n' if owner else "")
        + f'[report]\narchive_url = "{archive_url}"\n' + report
    )
    path = tmp / "kbot.toml"
    path.write_text(text)
    return load_config(path)


def recorded_index() -> dict[str, tuple[str, str]]:
    """golden name -> (file under recorded/, report kind)."""
    data = json.loads((RECORDED / "index.json").read_text(encoding="utf-8"))
    return {k: (str(v[0]), str(v[1])) for k, v in data.items()}


def load_result(name: str) -> ReportContext:
    """A recorded report context by its golden's name (regression, series, ...)."""
    path, kind = recorded_index()[name]
    data = json.loads((RECORDED / path).read_text(encoding="utf-8"))
    if isinstance(data, list):
        data = next(d for d in data if d.get("kind") == kind)
    return context_from_json(data, f"{path} ({kind})")


C = TypeVar("C")


def load_as(name: str, cls: type[C]) -> C:
    ctx = load_result(name)
    assert isinstance(ctx, cls), f"{name} is a {type(ctx).__name__}, not {cls.__name__}"
    return ctx


def result_names() -> list[str]:
    return sorted(recorded_index())


def golden_reporter(tmp: Path) -> Reporter:
    """A Reporter with the recorded kbot's identity (what the goldens were rendered with)."""
    cfg = write_config(tmp, bot_email=BOT_EMAIL, owner=OWNER)
    return Reporter(cfg, Store.in_state_dir(cfg.state_dir))


def render_golden(ctx: ReportContext, tmp: Path) -> bytes:
    """The mail a golden holds: the context rendered at a fixed Message-ID and date."""
    return golden_reporter(tmp).prepare(ctx, msgid=FIXED_MSGID, date=DATE, mode=Mode.FULL).raw


_TRAILER = re.compile(r"^([A-Za-z-]+-by|Cc): (.+)$", re.MULTILINE)
_MARK = re.compile(r"^\[(?P<pfx>[^\]]*?)(?P<n>\d+)/(?P<m>\d+)\]\s*(?P<title>.*)$")


def _person(value: str) -> Person:
    name, email = parseaddr(value)
    return Person(name, email)


def seed_series(path: Path) -> Series:
    """The shared seed thread as intake's Series, read with the standard library only.

    (intake's own parser is tested by intake; this keeps the report tests independent of it.)
    """
    cover: Cover | None = None
    patches: list[Patch] = []
    for msg in mailbox.mbox(str(path)):
        subject = " ".join(str(msg["Subject"]).split())
        if subject.lower().startswith("re:"):
            continue  # a reply, not part of the series
        m = _MARK.match(subject)
        assert m is not None, subject
        msgid = str(msg["Message-Id"]).strip().strip("<>")
        author = _person(str(msg["From"]))
        payload = msg.get_payload(decode=True)
        assert isinstance(payload, bytes)
        body = payload.decode("utf-8", "replace")
        n, total = int(m["n"]), int(m["m"])
        if n == 0:
            cover = Cover(msgid, subject, m["title"], author, None, body)
            continue
        cc = tuple(
            Person(name, email)
            for name, email in getaddresses([str(msg["To"] or ""), str(msg["Cc"] or "")])
        )
        commit_message, _, diff = body.partition("\n---\n")
        trailers = tuple(Trailer(t[0], t[1]) for t in _TRAILER.findall(commit_message))
        patches.append(Patch(
            index=n, total=total, message_id=msgid, subject=subject, title=m["title"],
            author=author, date=None, commit_message=commit_message, diff=diff, files=(),
            patch_id="", trailers=trailers, prefixes=("PATCH",), cc=cc,
        ))
    patches.sort(key=lambda p: p.index)
    assert cover is not None
    return Series(
        version=1, title=cover.title, prefixes=("PATCH",), total=patches[0].total,
        cover=cover, patches=tuple(patches), missing=(),
    )


def seed_regression(mbox: Path) -> RegressionReport:
    """A regression on patch 4 of the shared real kvm thread (evmcs_test under Bochs), with
    the recorded regression's Reproduce adapted: the rich Cc list of a real thread."""
    import dataclasses

    info = dataclasses.replace(series_info(seed_series(mbox), list_address="kvm@vger.kernel.org"),
                               archive_url="https://lore.kernel.org/kvm/")
    recorded = load_as("regression", RegressionReport)
    assert recorded.reproduce.vm is not None
    repro = dataclasses.replace(
        recorded.reproduce, tree="linux-6.1", tree_note="not published; its base is v6.1.192",
        base_sha="4" * 40, series_msgid=info.root_msgid,
        patches=tuple(p.msgid for p in info.patches), patches_total=4,
        vm=dataclasses.replace(recorded.reproduce.vm, backend=Backend.BOCHS,
                               vendor=Vendor.VMX, tests=("evmcs_test",), emulator=()),
        kbot=(), script_url="", files_url="")
    return RegressionReport(
        series=info,
        base=BaseInfo("linux-6.1", "master", "4" * 40, BaseChoice.GUESSED, "v6.1.192"),
        first_bad=4,
        failures=(Failure(
            "evmcs_test", VmSetup(Backend.BOCHS, Vendor.VMX, "corei7_haswell_4770"),
            on_patch=RunCount(3, 3), on_base=RunCount(0, 3),
            assertion=Assertion("x86_64/evmcs_test.c", 240, "KVM_SET_NESTED_STATE failed, "
                                "rc: -1 errno: 22 (Invalid argument)")),),
        reproduce=repro,
    )


def world_config(tmp: Path, report: str = 'series_summary = "always"\n') -> Config:
    """The recorded world's config (tests/report/world.py, record.py) where the reports read
    it: the list and its archive, the tree, the fragment, artifacts_url."""
    from tests.build.fake_kernel import FRAGMENT
    from tests.report.world import FRAGMENT_NAME

    tmp.mkdir(parents=True, exist_ok=True)
    frag = tmp / FRAGMENT_NAME
    frag.write_text(FRAGMENT, encoding="utf-8")
    path = tmp / "kbot.toml"
    path.write_text(f"""schema = 1
inherit = false
[archive]
base_url = "https://lore.kernel.org"
[[lists]]
name = "kvm"
address = "kvm@vger.kernel.org"
[[trees]]
name = "fake"
path = "{tmp}"
[build]
fragments = ["{frag}"]
[report]
artifacts_url = "https://kbot.example.org/kbot"
{report}""", encoding="utf-8")
    return load_config(path)


def recorded_job(name: str) -> SeriesJobResult:
    """A recorded job's SeriesJobResult (tests/report/recorded/jobs/<name>/results.json)."""
    from bot import codec
    from bot.pipeline.series_job import SeriesJobResult

    data = json.loads((RECORDED / "jobs" / name / "results.json").read_text(encoding="utf-8"))
    result: SeriesJobResult = codec.load(SeriesJobResult, data, f"{name}/results.json")
    return result
