"""Service benchmark: a day of a busy list replayed into a real archive, watched as `kbot serve`
would watch it.

    .venv/bin/python bench/service.py                  # 30 series, ~400 messages, 12 polls
    .venv/bin/python bench/service.py --series 60 --polls 24
    .venv/bin/python bench/service.py --real            # + bench/time_to_report.py, kernel

A loopback public-inbox (Debian's, as in the tests) receives the day in `--polls` batches, in
the order the mail was sent: series of 1 to 8 patches (most with a cover letter), review
replies with trailers, chatter, and `#kbot` commands from an allowed maintainer (help, test,
a malformed one) and from a stranger. After each batch kbot polls the list (feed, rt: search,
delivery-order sweep, thread fetches, assembly, filters: bot.intake.watcher) and reads the
commands (bot.commands), in this process, timed. Jobs are recorded, not run: the build and
VM stages are not part of what this measures (bench/time_to_report.py measures those).

Printed: messages and series of the day; per poll: new messages, seconds; polls/s; time from
a series' last mail landing in the archive to its job being recorded (the poll interval is
not counted: kbot would poll `poll_s` later); commands acted on; the store's size on disk.
`--real` then runs bench/time_to_report.py --world kernel for 3 series of the real 6.1 tree
(real builds, QEMU TCG and Bochs boots; minutes), i.e. arrival to report per series.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot import proc  # noqa: E402
from bot.commands.act import process  # noqa: E402
from bot.config import load_config  # noqa: E402
from bot.intake.client import ArchiveClient  # noqa: E402
from bot.intake.local_inbox import LocalInbox  # noqa: E402
from bot.intake.watcher import watch_once  # noqa: E402
from bot.state import Store  # noqa: E402
from bot.table import columns  # noqa: E402
from tests.fixtures.public_inbox import patch_mail  # noqa: E402

MAINTAINER = "Paolo Maintainer <paolo@example.org>"
STRANGER = "Mallory <mallory@example.net>"
FILES = ("arch/x86/kvm/vmx/nested.c", "arch/x86/kvm/svm/nested.c", "arch/x86/kvm/x86.c")


def day(n_series: int, seed: int) -> tuple[list[tuple[datetime, bytes]], dict[str, str]]:
    """(send time, raw) for one day, and each series' last Message-ID -> its name."""
    rng = random.Random(seed)
    # Yesterday: kbot does not obey commands in mail that is days old when it arrives.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    mails: list[tuple[datetime, bytes]] = []
    last: dict[str, str] = {}
    for s in range(n_series):
        when = start + timedelta(minutes=rng.randint(0, 14 * 60))
        total = rng.choice((1, 2, 3, 3, 4, 5, 8))
        author = f"Dev {s} <dev{s}@example.org>"
        cover = rng.random() < 0.8 and total > 1
        root = f"s{s}-0@example.org" if cover else f"s{s}-1@example.org"
        name = f"KVM: x86: day series {s}"
        if cover:
            mails.append((when, patch_mail(root, f"[PATCH 0/{total}] {name}", files=(),
                                           author=author, date=when,
                                           body=f"Cover of {name}.\n")))
        for i in range(1, total + 1):
            mid = f"s{s}-{i}@example.org"
            t = when + timedelta(seconds=i)
            mails.append((t, patch_mail(mid, f"[PATCH {i}/{total}] {name} part {i}",
                                        files=(rng.choice(FILES),), author=author, date=t,
                                        in_reply_to=None if mid == root else root)))
            last[mid] = name
        for r in range(rng.randint(1, 6)):  # reviews, with and without trailers
            t = when + timedelta(minutes=rng.randint(5, 600))
            target = f"s{s}-{rng.randint(1, total)}@example.org"
            body = ("Looks good.\n\nReviewed-by: Rev Iewer <rev@example.org>\n"
                    if rng.random() < 0.5 else "> quoted\n\nA question about this hunk.\n")
            mails.append((t, patch_mail(f"s{s}-r{r}@example.org", f"Re: [PATCH] {name}",
                                        files=(), in_reply_to=target, date=t, body=body,
                                        author="Rev Iewer <rev@example.org>")))
        if s % 7 == 0:  # commands: allowed, malformed, and a stranger's
            t = when + timedelta(hours=2)
            for k, (who, text) in enumerate(((MAINTAINER, "#kbot help"),
                                             (MAINTAINER, "#kbot bisect good=v6.1"),
                                             (STRANGER, "#kbot test"))):
                mails.append((t, patch_mail(f"s{s}-c{k}@example.org", f"Re: {name}", files=(),
                                            in_reply_to=root, date=t, author=who,
                                            body=f"{text}\n")))
    for c in range(n_series * 2):  # chatter in threads of their own
        t = start + timedelta(minutes=rng.randint(0, 16 * 60))
        mails.append((t, patch_mail(f"chat-{c}@example.org", f"question {c}", files=(),
                                    date=t, body="How do I ...?\n")))
    mails.sort(key=lambda m: m[0])
    return mails, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=30)
    ap.add_argument("--polls", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--real", action="store_true", help="also the real-stage 3-series day")
    args = ap.parse_args()
    mails, last = day(args.series, args.seed)
    with tempfile.TemporaryDirectory(prefix="kbot-bench-service-") as tmp:
        root = Path(tmp)
        inbox = LocalInbox(root / "inbox", ("kvm",))
        inbox.start()
        try:
            cfg_path = root / "kbot.toml"
            cfg_path.write_text(f"""schema = 1
inherit = false
[bot]
email = "kbot@example.org"
[archive]
base_url = "{inbox.base_url}"
timeout_s = 30
[[lists]]
name = "kvm"
files = ["arch/x86/kvm/*"]
settle_s = 0
[commands]
enabled = true
allow = ["paolo@example.org"]
""", encoding="utf-8")
            config = load_config(cfg_path)
            batches = [mails[i::args.polls] for i in range(args.polls)]
            batches = [sorted(b, key=lambda m: m[0]) for b in batches if b]
            rows = [("poll", "delivered", "new msgs", "recorded", "commands", "seconds")]
            landed: dict[str, float] = {}
            latency: list[float] = []
            poll_seconds: list[float] = []
            acted = replies = 0
            with Store.in_state_dir(root / "state") as store, \
                    ArchiveClient(config.archive) as client:
                for n, batch in enumerate(batches, 1):
                    inbox.deliver_many([raw for _, raw in batch], "kvm")
                    now = time.monotonic()
                    for _, raw in batch:
                        for mid in last:
                            if f"<{mid}>".encode() in raw.split(b"\n\n", 1)[0]:
                                landed[mid] = now
                    t0 = time.monotonic()
                    report = watch_once(config, store, client)
                    done = process(config, store)
                    dt = time.monotonic() - t0
                    poll_seconds.append(dt)
                    commands = len(done.recorded)
                    acted += commands
                    replies += len(done.replies)
                    for rec in report.recorded:
                        row = store.get_series(rec.series_id)
                        ids = [p["message_id"] for p in (row.data["patches"] if row else [])]
                        t_last = max((landed.get(i, 0.0) for i in ids), default=0.0)
                        if t_last:
                            latency.append(time.monotonic() - t_last)
                    rows.append((str(n), str(len(batch)), str(report.new_messages),
                                 str(len(report.recorded)), str(commands), f"{dt:.2f}"))
                jobs = len(store.jobs())
                rows_by_job = [store.get_series(j.series_id) for j in store.jobs()
                               if j.series_id is not None]
                names = {r.title for r in rows_by_job if r is not None}
                missing = sorted({n for n in last.values()
                                  if not any(n in x for x in names)})
            size = sum(p.stat().st_size for p in (root / "state").glob("kbot.sqlite3*"))
        finally:
            inbox.stop()
    print(f"day: {len(mails)} messages, {args.series} series, {len(batches)} polls")
    print("\n".join(columns(rows)))
    total = sum(poll_seconds)
    print(f"\npolls/s: {len(poll_seconds) / total:.2f} (mean poll "
          f"{statistics.mean(poll_seconds):.2f} s, max {max(poll_seconds):.2f} s)")
    if latency:
        q = statistics.quantiles(latency, n=20) if len(latency) > 1 else latency
        print(f"last mail in archive -> job recorded: mean {statistics.mean(latency):.2f} s, "
              f"p95 {q[-1]:.2f} s, over {len(latency)} series (plus up to poll_s of waiting)")
    print(f"jobs recorded: {jobs}; commands recorded: {acted}, replies: {replies}")
    print(f"series of the day without a job: {len(missing)}"
          + (f" ({', '.join(missing)})" if missing else ""))
    print(f"store size: {size / 1e6:.1f} MB ({size / len(mails) / 1e3:.1f} kB per message)")
    if args.real:
        # Three series, one after the other, each new to the (warm) cache.
        for n in range(1, 4):
            print(f"\nreal stages, series {n} of 3 (bench/time_to_report.py --world kernel):",
                  flush=True)
            res = proc.run([sys.executable, str(ROOT / "bench" / "time_to_report.py"),
                            "--world", "kernel"], cwd=ROOT, timeout=7200)
            print(res.stdout + res.stderr[-1500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
