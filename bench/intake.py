"""Intake benchmark: parse a generated mbox of realistic patch mail into series.

    .venv/bin/python bench/intake.py                 # 20,000 messages, plus 60,000 for memory
    .venv/bin/python bench/intake.py --sizes 20000   # one size

For each size it writes an mbox (cover letters, patches with real-looking diffs, review replies
with trailers, arriving interleaved in date order as on a list archive), then parses it in a
fresh child process (so peak RSS is the parser's alone) with iter_raw -> parse_message ->
iter_series, and prints messages/s (CPU time of that one process, and wall time) and peak RSS.
Peak RSS that stays flat as the mbox grows shows the stream holds no more than a window.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot import proc  # noqa: E402

AUTHORS = [("Sean Christopherson", "seanjc@google.com"), ("Paolo Bonzini", "pbonzini@redhat.com"),
           ("Vitaly Kuznetsov", "vkuznets@redhat.com"), ("Maxim Levitsky", "mlevitsk@redhat.com"),
           ("Jim Mattson", "jmattson@google.com"), ("Yosry Ahmed", "yosry@google.com"),
           ("Binbin Wu", "binbin.wu@linux.intel.com"), ("Chao Gao", "chao.gao@intel.com")]
FILES = ["arch/x86/kvm/vmx/nested.c", "arch/x86/kvm/svm/nested.c", "arch/x86/kvm/x86.c",
         "arch/x86/kvm/mmu/mmu.c", "arch/x86/include/asm/kvm_host.h",
         "tools/testing/selftests/kvm/x86_64/state_test.c", "Documentation/virt/kvm/api.rst",
         "drivers/net/ethernet/intel/e1000e/netdev.c", "fs/ext4/inode.c"]
WORDS = ("nested state vmcs guest host exit entry mapping restore migration flag page table "
         "register interrupt pending event vcpu request handle update check").split()


TARGET_MSG_S = 3000


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _diff(rng: random.Random, path: str) -> tuple[str, int, int]:
    hunks = []
    added = removed = 0
    start = rng.randint(10, 3000)
    for _ in range(rng.randint(1, 3)):
        ctx = [f"\t{_sentence(rng, 5)};" for _ in range(6)]
        minus = [f"\tif ({_sentence(rng, 3)})" for _ in range(rng.randint(0, 4))]
        plus = [f"\tif ({_sentence(rng, 4)} && x)" for _ in range(rng.randint(1, 8))]
        body = [" " + c for c in ctx[:3]] + ["-" + m for m in minus] + ["+" + p for p in plus] + \
            [" " + c for c in ctx[3:]]
        hunks.append(f"@@ -{start},{6 + len(minus)} +{start},{6 + len(plus)} @@ static int "
                     f"f(struct kvm_vcpu *vcpu)\n" + "\n".join(body))
        added += len(plus)
        removed += len(minus)
        start += rng.randint(40, 400)
    head = (f"diff --git a/{path} b/{path}\nindex {rng.getrandbits(48):012x}..."
            f"{rng.getrandbits(48):012x} 100644\n--- a/{path}\n+++ b/{path}\n")
    return head.replace("...", "..") + "\n".join(hunks) + "\n", added, removed


def _mail(frm: tuple[str, str], subject: str, msgid: str, when: datetime, body: str,
          irt: str | None = None, refs: tuple[str, ...] = ()) -> str:
    hdr = [
        "Return-Path: <kvm+bounces@vger.kernel.org>",
        "Received: from sv.mirrors.kernel.org (sv.mirrors.kernel.org [139.178.88.99])\n"
        "\tby smtp.lore.kernel.org (Postfix) with ESMTPS id 1234\n"
        f"\tfor <kvm@archiver.kernel.org>; {format_datetime(when)}",
        f"From: {frm[0]} <{frm[1]}>",
        "To: Paolo Bonzini <pbonzini@redhat.com>, Sean Christopherson <seanjc@google.com>",
        "Cc: kvm@vger.kernel.org, linux-kernel@vger.kernel.org,\n Jim Mattson "
        "<jmattson@google.com>, Maxim Levitsky <mlevitsk@redhat.com>",
        f"Subject: {subject}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{msgid}>",
    ]
    if irt:
        hdr.append(f"In-Reply-To: <{irt}>")
    if refs:
        hdr.append("References: " + "\n ".join(f"<{r}>" for r in refs))
    hdr += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=UTF-8",
            "Content-Transfer-Encoding: 8bit", "Precedence: bulk",
            "List-Id: <kvm.vger.kernel.org>", "X-Mailing-List: kvm@vger.kernel.org"]
    return "\n".join(hdr) + "\n\n" + body


def generate(n_messages: int, seed: int = 1) -> Iterator[str]:
    """`n_messages` mails (as text), in date order, series interleaved with their replies."""
    rng = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    heap: list[tuple[float, int, str]] = []
    made = emitted = 0
    series_no = 0
    while emitted < n_messages:
        now = t0 + timedelta(minutes=20 * series_no)
        # Release everything dated before this series starts.
        while heap and heap[0][0] <= now.timestamp() and emitted < n_messages:
            yield heapq.heappop(heap)[2]
            emitted += 1
        if emitted >= n_messages:
            break
        series_no += 1
        author = rng.choice(AUTHORS)
        total = rng.choice([1, 1, 2, 3, 4, 5, 8])
        version = rng.choice([1, 1, 2, 3])
        v = f" v{version}" if version > 1 else ""
        title = f"KVM: x86: {_sentence(rng, 6)} ({series_no})"
        tag = f"s{series_no}.{rng.getrandbits(32):08x}"
        root = f"{tag}-0@{author[1].split('@')[1]}"
        ids = []
        if total > 1:
            body = (f"{_sentence(rng, 30)}\n\n{_sentence(rng, 25)}\n\n{author[0]} ({total}):\n" +
                    "".join(f"  {_sentence(rng, 6)}\n" for _ in range(total)) +
                    f"\n 3 files changed\n\nbase-commit: {rng.getrandbits(160):040x}\n"
                    f"change-id: 2024-{tag}\n-- \n2.43.0\n")
            heapq.heappush(heap, (now.timestamp(), made, _mail(
                author, f"[PATCH{v} 0/{total}] {title}", root, now, body)))
            made += 1
            ids.append(root)
        for i in range(1, total + 1):
            when = now + timedelta(seconds=i)
            files = rng.sample(FILES, rng.randint(1, 3))
            diffs = [_diff(rng, f) for f in files]
            stat = "".join(f" {f} | {a + r} {'+' * a}{'-' * r}\n" for f, (_, a, r) in
                           zip(files, diffs, strict=True))
            msg = (f"{_sentence(rng, 12)}\n{_sentence(rng, 12)}\n{_sentence(rng, 10)}\n\n"
                   f"{_sentence(rng, 14)}\n\nSigned-off-by: {author[0]} <{author[1]}>\n---\n"
                   f"{stat} {len(files)} files changed\n\n" + "".join(d for d, _, _ in diffs) +
                   "-- \n2.43.0\n")
            mid = f"{tag}-{i}@{author[1].split('@')[1]}"
            parent = root if total > 1 else None
            heapq.heappush(heap, (when.timestamp(), made, _mail(
                author, f"[PATCH{v} {i}/{total}] {title} part {i}" if total > 1 else
                f"[PATCH{v}] {title}", mid, when, msg, parent, (parent,) if parent else ())))
            made += 1
            ids.append(mid)
        for r in range(rng.choice([0, 0, 1, 2, 3])):
            target = rng.choice(ids)
            reviewer = rng.choice(AUTHORS)
            when = now + timedelta(minutes=rng.randint(30, 600))
            body = (f"On Mon, {author[0]} wrote:\n> {_sentence(rng, 10)}\n> {_sentence(rng, 9)}\n\n"
                    f"{_sentence(rng, 15)}\n\nReviewed-by: {reviewer[0]} <{reviewer[1]}>\n")
            refs = (root, target) if total > 1 and target != root else (target,)
            heapq.heappush(heap, (when.timestamp(), made, _mail(
                reviewer, f"Re: [PATCH{v}] {title}", f"{tag}-r{r}@example.org", when, body,
                target, refs)))
            made += 1
    while heap and emitted < n_messages:
        yield heapq.heappop(heap)[2]
        emitted += 1


def write_mbox(path: Path, n_messages: int) -> int:
    with path.open("w", encoding="utf-8") as fh:
        for text in generate(n_messages):
            fh.write("From mboxrd@z Thu Jan  1 00:00:00 1970\n")
            fh.write(text if text.endswith("\n") else text + "\n")
            fh.write("\n")
    return path.stat().st_size


def parse_child(path: Path) -> dict[str, float]:
    """Runs in the child: the whole intake path over the file, in constant memory."""
    from bot.errors import InputError
    from bot.intake.mail import parse_message
    from bot.intake.mbox import iter_raw
    from bot.intake.series import iter_series

    problems = bad = 0

    def messages() -> Iterator:  # type: ignore[type-arg]
        nonlocal bad
        for raw in iter_raw(path, on_problem=lambda p: None):
            try:
                yield parse_message(raw)
            except InputError:
                bad += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    count = series = patches = 0
    counted = 0

    def counting() -> Iterator:  # type: ignore[type-arg]
        nonlocal count
        for m in messages():
            count += 1
            yield m

    for s in iter_series(counting(), flush_after=2000):
        series += 1
        patches += len(s.patches)
        counted += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"messages": count, "series": series, "patches": patches, "bad": bad + problems,
            "cpu_s": cpu, "wall_s": wall, "peak_rss_mib": rss_kib / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 60000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(parse_child(args.child)))
        return 0
    print(f"{'messages':>9} {'mbox MiB':>9} {'series':>7} {'patches':>8} {'msg/s cpu':>10} "
          f"{'msg/s wall':>10} {'peak RSS MiB':>12}")
    rates: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="kbot-bench-") as tmp:
        for n in args.sizes:
            path = Path(tmp) / f"bench-{n}.mbox"
            print(f"generating {n} messages ...", file=sys.stderr)
            size = write_mbox(path, n)
            res = proc.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path)],
                           timeout=1800, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{int(r['messages']):>9} {size / 2**20:>9.1f} {int(r['series']):>7} "
                  f"{int(r['patches']):>8} {r['messages'] / r['cpu_s']:>10.0f} "
                  f"{r['messages'] / r['wall_s']:>10.0f} {r['peak_rss_mib']:>12.1f}")
            path.unlink()
            rates.append(r["messages"] / r["cpu_s"])
            rss.append(r["peak_rss_mib"])
    verdict = "met" if min(rates) >= TARGET_MSG_S else "NOT met"
    print(f"target {TARGET_MSG_S} msg/s on one core (CPU time): {verdict} "
          f"(slowest {min(rates):.0f} msg/s)")
    if len(rss) > 1:
        grow = args.sizes[-1] / args.sizes[0]
        print(f"peak RSS x{rss[-1] / rss[0]:.2f} for a x{grow:.1f} larger mbox "
              f"({rss[0]:.1f} -> {rss[-1]:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
