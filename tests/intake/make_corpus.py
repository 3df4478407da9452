"""Build the intake edge-case corpus (tests/intake/corpus/*.mbox) from real `git format-patch`.

Run once by hand (`.venv/bin/python -m tests.intake.make_corpus`); the mboxes are committed and
their expected outputs (*.expected.json) are reviewed by a person, not regenerated blindly
(`--expected` rewrites them from the current code: read the diff before committing it).
Dates and identities are fixed, so the output is the same on every run.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bot import proc

CORPUS = Path(__file__).resolve().parent / "corpus"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace", "GIT_AUTHOR_EMAIL": "ada@example.org",
    "GIT_COMMITTER_NAME": "Ada Lovelace", "GIT_COMMITTER_EMAIL": "ada@example.org",
    "GIT_AUTHOR_DATE": "2024-03-01T10:00:00+00:00",
    "GIT_COMMITTER_DATE": "2024-03-01T10:00:00+00:00",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
}
ADA = "Ada Lovelace <ada@example.org>"
GRACE = "Grace Hopper <grace@example.org>"
LIST = "kvm@vger.kernel.org"


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    res = proc.run(["git", "-C", str(repo), *args], timeout=60, env=proc.clean_env(GIT_ENV),
                   input=input, check=True)
    return res.stdout


def make_repo(root: Path, revisions: int = 2) -> tuple[Path, str, list[list[str]]]:
    """A small tree and, per revision, the bodies of 4 patches (commit message + diff)."""
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    files = {
        "arch/x86/kvm/vmx/nested.c": [f"static int nested_{i}(void) {{ return {i}; }}"
                                      for i in range(40)],
        "arch/x86/kvm/svm/nested.c": [f"static int svm_{i}(void) {{ return {i}; }}"
                                      for i in range(40)],
        "tools/testing/selftests/kvm/x86_64/state_test.c": [f"/* step {i} */" for i in range(30)],
        "Documentation/virt/kvm/api.rst": [f"Line {i} of the API text." for i in range(30)],
    }
    for path, lines in files.items():
        p = repo / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(lines) + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD").strip()
    out: list[list[str]] = []
    for rev in range(1, revisions + 1):
        git(repo, "checkout", "-q", "-B", f"v{rev}", base)
        edits = [
            ("arch/x86/kvm/vmx/nested.c", 5, "KVM: nVMX: Fix nested state size"),
            ("arch/x86/kvm/svm/nested.c", 12, "KVM: nSVM: Clear the pending event on exit"),
            ("tools/testing/selftests/kvm/x86_64/state_test.c", 7,
             "KVM: selftests: Test nested state restore"),
            ("Documentation/virt/kvm/api.rst", 3, "KVM: Documentation: Describe the new flag"),
        ]
        for n, (path, line, title) in enumerate(edits, 1):
            p = repo / path
            lines = p.read_text().split("\n")
            lines[line] = lines[line] + f"  /* changed in v{rev} */" if rev > 1 or n != 2 else \
                lines[line].replace("return", "return -")
            lines.insert(line + 4, f"/* added by patch {n} */")
            p.write_text("\n".join(lines))
            msg = (f"{title}\n\nThis change does thing {n} properly, revision {rev}.\n"
                   f"It matters for nested guests.\n\nSigned-off-by: {ADA}\n")
            git(repo, "commit", "-q", "-a", "-m", msg)
        mbox = git(repo, "format-patch", "--stdout", "--base", base, f"{base}..HEAD")
        bodies: list[str] = []
        for chunk in mbox.split("\nFrom ")[0:]:
            text = chunk if chunk.startswith("From ") else "From " + chunk
            msg_obj = email.message_from_string(text.split("\n", 1)[1], policy=email.policy.default)
            payload = msg_obj.get_payload()
            assert isinstance(payload, str)
            bodies.append(payload)
        out.append(bodies)
    return repo, base, out


@dataclass
class Mail:
    msgid: str
    subject: str
    body: str
    sender: str = ADA
    date: str = "Fri, 01 Mar 2024 10:00:00 +0000"
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    extra_headers: tuple[tuple[str, str], ...] = ()
    raw: str | None = None  # a ready-made MIME message (headers + body), used as is

    def render(self) -> str:
        if self.raw is not None:
            return self.raw
        hdrs = [
            ("From", self.sender), ("To", LIST), ("Subject", self.subject), ("Date", self.date),
            ("Message-Id", f"<{self.msgid}>"),
        ]
        if self.in_reply_to:
            hdrs.append(("In-Reply-To", f"<{self.in_reply_to}>"))
        if self.references:
            hdrs.append(("References", " ".join(f"<{r}>" for r in self.references)))
        hdrs += [("MIME-Version", "1.0"), ("Content-Type", "text/plain; charset=utf-8"),
                 ("Content-Transfer-Encoding", "8bit"), *self.extra_headers]
        head = "".join(f"{k}: {v}\n" for k, v in hdrs)
        return head + "\n" + self.body


def write_mbox(path: Path, mails: list[Mail]) -> None:
    chunks = []
    for m in mails:
        text = m.render()
        # mboxrd quoting
        lines = [(">" + ln) if ln.lstrip(">").startswith("From ") else ln
                 for ln in text.split("\n")]
        body = "\n".join(lines)
        if not body.endswith("\n"):
            body += "\n"
        chunks.append("From mboxrd@z Thu Jan  1 00:00:00 1970\n" + body + "\n")
    path.write_text("".join(chunks))


def date(minute: int, day: int = 1) -> str:
    return f"Fri, {day:02d} Mar 2024 10:{minute:02d}:00 +0000"


def cover_body(base: str, extra: str = "") -> str:
    return ("This series fixes nested state handling.\n\nAda Lovelace (3):\n  ...\n\n"
            " arch/x86/kvm/vmx/nested.c | 2 ++\n 1 file changed\n\n"
            f"{extra}base-commit: {base}\n-- \n2.39.5\n")


def thread(prefix: str, n: int, bodies: list[str], version: int = 1, cover: str | None = None,
           minute0: int = 0, tag: str = "PATCH", threaded: bool = True,
           day: int = 1) -> list[Mail]:
    v = f" v{version}" if version > 1 else ""
    mails: list[Mail] = []
    root = f"{prefix}-0@example.org"
    if cover is not None:
        mails.append(Mail(root, f"[{tag}{v} 0/{n}] KVM: nVMX: Fix nested state", cover,
                          date=date(minute0, day)))
    for i in range(1, n + 1):
        title = bodies[i - 1].split("\n", 1)[0]
        irt = root if (cover is not None and threaded) else (
            f"{prefix}-1@example.org" if i > 1 and threaded else None)
        mails.append(Mail(
            f"{prefix}-{i}@example.org", f"[{tag}{v} {i}/{n}] {title}",
            bodies[i - 1].split("\n", 2)[2] if bodies[i - 1].count("\n") > 2 else bodies[i - 1],
            date=date(minute0 + i, day), in_reply_to=irt, references=(irt,) if irt else (),
        ))
    return mails


def reply(msgid: str, parent: Mail, text: str, sender: str = GRACE, minute: int = 30,
          root: str | None = None) -> Mail:
    refs = tuple(r for r in (root, parent.msgid) if r)
    quoted = "\n".join("> " + ln for ln in parent.body.split("\n")[:6])
    return Mail(msgid, "Re: " + parent.subject, f"On Fri, Ada wrote:\n{quoted}\n\n{text}\n",
                sender=sender, date=date(minute), in_reply_to=parent.msgid, references=refs)


def build(root: Path) -> dict[str, list[Mail]]:
    _repo, base, revs = make_repo(root)
    v1, v2 = revs[0][:3], revs[1][:3]
    # format-patch bodies: "Subject" is in the headers; the payload is message + diff.
    titles = ["KVM: nVMX: Fix nested state size", "KVM: nSVM: Clear the pending event on exit",
              "KVM: selftests: Test nested state restore"]
    v1 = [f"{t}\n\n{b}" for t, b in zip(titles, v1, strict=True)]
    v2 = [f"{t}\n\n{b}" for t, b in zip(titles, v2, strict=True)]
    cases: dict[str, list[Mail]] = {}

    t = thread("miss", 3, v1, cover=cover_body(base))
    cases["missing-patch"] = [m for m in t if m.msgid != "miss-2@example.org"]

    t = thread("ooo", 3, v1, cover=cover_body(base))
    cases["out-of-order"] = [t[3], t[0], t[2], t[1]]

    old = thread("prr", 3, v1, cover=cover_body(base))
    re2 = thread("prr-v2", 3, v2, version=2, minute0=40)[2 - 1]
    re2.in_reply_to = "prr-2@example.org"
    re2.references = ("prr-0@example.org", "prr-2@example.org")
    cases["partial-reroll"] = [*old, re2]

    a = thread("vone", 3, v1, cover=cover_body(base, "change-id: 20240301-nested-state-1a2b\n"))
    b = thread("vtwo", 3, v2, version=2, day=8,
               cover=cover_body(base, "change-id: 20240301-nested-state-1a2b\n"))
    cases["v1-then-v2"] = [*a, *b]

    t = thread("trl", 3, v1, cover=cover_body(base))
    r1 = reply("trl-r1@example.org", t[0], "Looks good.\n\nReviewed-by: Grace Hopper "
               "<grace@example.org>", root=t[0].msgid)
    r2 = reply("trl-r2@example.org", t[2], "Works here.\n\nTested-by: Linus Torvalds "
               "<torvalds@example.org>", sender="Linus Torvalds <torvalds@example.org>",
               root=t[0].msgid, minute=31)
    r3 = reply("trl-r3@example.org", r2, "Agreed with Linus.\n\n> Acked-by: Quoted Person "
               "<quoted@example.org>\nAcked-by: Paolo Bonzini <pbonzini@example.org>",
               sender="Paolo Bonzini <pbonzini@example.org>", root=t[0].msgid, minute=32)
    r3.references = (t[0].msgid, t[2].msgid, r2.msgid)
    cases["trailers-in-replies"] = [*t, r1, r2, r3]

    single = Mail("single-1@example.org", "[PATCH] " + titles[0], v1[0].split("\n", 2)[2],
                  date=date(1))
    quote_diff = Mail(
        "single-r1@example.org", "Re: [PATCH] " + titles[0],
        "On Fri, Ada wrote:\n" + "\n".join("> " + ln for ln in single.body.split("\n")) +
        "\n\nWhy not this instead?\n\n" + v2[0].split("\n", 2)[2].split("\ndiff --git", 1)[0],
        sender=GRACE, date=date(20), in_reply_to=single.msgid, references=(single.msgid,))
    announce = Mail("announce@example.org", "KVM Forum 2024: call for presentations",
                    "Please send talks.\n", sender=GRACE, date=date(0))
    cases["non-patch"] = [announce, single, quote_diff]

    html_only = Mail("html@example.org", "", "", raw=(
        f"From: {GRACE}\nTo: {LIST}\nSubject: Re: [PATCH] {titles[0]}\n"
        "Message-Id: <html@example.org>\nIn-Reply-To: <junk-1@example.org>\n"
        "MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"BB\"\n\n"
        "--BB\nContent-Type: text/html; charset=utf-8\n\n<html><body><p>Reviewed-by: "
        "<b>nobody</b></p></body></html>\n--BB--\n"))
    b64 = __import__("base64").b64encode(v1[0].split("\n", 2)[2].encode()).decode()
    b64_lines = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))
    b64_patch = Mail("junk-1@example.org", "", "", raw=(
        f"From: {ADA}\nTo: {LIST}\nSubject: [PATCH] {titles[0]}\nDate: {date(1)}\n"
        "Message-Id: <junk-1@example.org>\nMIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: base64\n\n"
        f"{b64_lines}\n"))
    html_spam = Mail("spam@example.org", "", "", raw=(
        f"From: Spammer <spam@example.com>\nTo: {LIST}\nSubject: =?utf-8?q?Cheap_p=C3=A4tches?=\n"
        "Message-Id: <spam@example.org>\nMIME-Version: 1.0\nContent-Type: text/html\n\n"
        "<html><body>diff --git a/x b/x<br>buy now</body></html>\n"))
    cases["html-junk"] = [html_spam, b64_patch, html_only]

    extra = ("prerequisite-patch-id: " + "ab" * 20 + "\n"
             "change-id: 20240301-base-footer-9f9f\n")
    cases["base-commit"] = thread("base", 2, v1, cover=cover_body(base, extra))

    t = thread("unth", 3, v1, cover=cover_body(base), threaded=False)
    cases["unthreaded"] = t

    t = thread("dup", 2, v1, cover=cover_body(base))
    resend = Mail("dup-2-resend@example.org", "[PATCH RESEND 2/2] " + titles[1], t[2].body,
                  date=date(50), in_reply_to=t[0].msgid, references=(t[0].msgid,))
    cases["resend-duplicate"] = [*t, t[2], resend]

    t = thread("nocov", 3, v2, version=3, tag="RFC PATCH")
    cases["no-cover-chain"] = t
    return cases


def reduce(series_json: list[dict[str, object]]) -> list[dict[str, object]]:
    """The part of `kbot series show --json` the corpus pins (dates and ids of replies vary)."""
    return series_json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--expected", action="store_true", help="also rewrite *.expected.json")
    args = parser.parse_args()
    CORPUS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cases = build(Path(tmp))
    for name, mails in cases.items():
        write_mbox(CORPUS / f"{name}.mbox", mails)
        print(f"wrote {name}.mbox ({len(mails)} messages)")
    if args.expected:
        from tests.intake.corpus_check import expected_of

        for name in cases:
            doc = expected_of(CORPUS / f"{name}.mbox")
            (CORPUS / f"{name}.expected.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
