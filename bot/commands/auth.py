"""Who may command kbot: the allowlist, DKIM, and mail that must never be answered.

- The sender (From:) must be on `[commands] allow`: `user@host` exactly, or `@host` for
  every address of that domain (no subdomains: `@example.org` does not let in
  `x@evil.example.org`).
- From: is easy to forge, so where the mail carries a DKIM signature of the sender's domain
  (d= the domain or a parent of it), one such signature must verify (dkimpy, the library b4
  uses; the public key from DNS, `dnsfunc` in tests). A domain on `[commands] require_dkim`
  must sign: a mail from it without a passing signature of its own is not obeyed, whatever
  other domains signed it (a valid signature of evil.org says nothing about From: example.org).
- Mail from kbot itself (its address, its X-Kbot-Report header), auto-replies and bounces
  (Auto-Submitted, Precedence: junk/auto_reply, X-Autoreply, a delivery report) is never
  obeyed or answered: bots answering bots is how mail loops start.

What is not obeyed is recorded and logged, never answered: an answer would tell a forger
what works, and could loop.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from dkim.dnsplug import get_txt  # type: ignore[import-untyped]
from dkim.util import parse_tag_value  # type: ignore[import-untyped]

from bot.config import CommandsSection
from bot.intake.model import Message

log = logging.getLogger(__name__)

# dkimpy's TXT lookup: name (bytes, e.g. b"sel._domainkey.example.org.") -> the record.
DnsFunc = Callable[..., bytes | None]
DNS_TIMEOUT_S = 5.0
MAX_SIGNATURES = 5  # signatures of the sender's domain tried; more is an attack, not mail
_AUTO_PRECEDENCE = ("junk", "auto_reply")
_BOUNCE_SENDERS = ("mailer-daemon", "postmaster")


def default_dnsfunc(name: bytes, timeout: float = DNS_TIMEOUT_S) -> bytes | None:
    """Real DNS (dkimpy's own lookup, through dnspython), with a timeout."""
    txt: bytes | None = get_txt(name, timeout=timeout)
    return txt


class DkimStatus(enum.Enum):
    NONE = "none"  # no signature of the sender's domain
    PASS = "pass"  # one of them verifies
    FAIL = "fail"  # there are some, none verifies


@dataclass(frozen=True)
class DkimResult:
    status: DkimStatus
    detail: str  # what was checked and what it said, for the record


@dataclass(frozen=True)
class Decision:
    """Whether to obey a mail's commands, and why (recorded with each command)."""

    allowed: bool
    reason: str
    dkim: DkimResult | None = None


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def _aligned(signer: str, sender_domain: str) -> bool:
    """A signature of the sender's domain, or of a parent of it (mail.example.org's
    mail signed by example.org)."""
    return bool(signer) and (sender_domain == signer or sender_domain.endswith("." + signer))


def _signature_domains(raw: bytes) -> list[str]:
    """d= of each DKIM-Signature header, in order ("" for one that does not parse)."""
    out: list[str] = []
    for name, value in dkim.DKIM(raw).headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = parse_tag_value(value)
        except Exception:  # dkimpy raises its own errors and ValueErrors
            out.append("")
            continue
        out.append(tags.get(b"d", b"").decode("ascii", "replace").lower().strip().rstrip("."))
    return out


def check_dkim(raw: bytes, sender: str, dnsfunc: DnsFunc = default_dnsfunc) -> DkimResult:
    """Verify the DKIM signatures of the sender's domain (see the module docstring)."""
    domain = _domain_of(sender)
    try:
        signers = _signature_domains(raw)
    except Exception as exc:  # a mail dkimpy cannot even read
        return DkimResult(DkimStatus.FAIL, f"DKIM: the mail does not parse: {exc}")
    mine = [i for i, d in enumerate(signers) if _aligned(d, domain)]
    if not mine:
        others = ", ".join(sorted({d for d in signers if d})) or "none"
        return DkimResult(DkimStatus.NONE, f"no DKIM signature of {domain} (signed by: {others})")
    problems: list[str] = []
    for idx in mine[:MAX_SIGNATURES]:
        d = dkim.DKIM(raw, timeout=DNS_TIMEOUT_S)
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException as exc:
            problems.append(f"d={signers[idx]}: {exc}")
            continue
        if ok:
            return DkimResult(DkimStatus.PASS, f"DKIM signature of {signers[idx]} verifies")
        problems.append(f"d={signers[idx]}: does not verify")
    return DkimResult(DkimStatus.FAIL, "DKIM signature of " + domain + " fails: "
                      + "; ".join(problems))


def allowed(address: str, allow: tuple[str, ...]) -> bool:
    """`user@host` exactly, or `@host` for every address of that domain."""
    a = address.strip().lower()
    domain = _domain_of(a)
    for entry in allow:
        e = entry.strip().lower()
        if e.startswith("@") and e[1:] == domain and "@" in a:
            return True
        if e == a:
            return True
    return False


def dkim_required(address: str, require: tuple[str, ...]) -> bool:
    """Must this sender's mail carry a passing DKIM signature of its own domain? (entries
    are domains, `@domain`s or addresses)"""
    a = address.strip().lower()
    domain = _domain_of(a)
    return any(e.strip().lower().lstrip("@") in (domain, a) for e in require)


def automatic(msg: Message, bot_email: str) -> str:
    """Why this mail is from a machine that must not be answered ("" when it is not)."""
    sender = msg.sender.email.lower()
    if sender == bot_email.lower():
        return "sent by kbot itself"
    heads = {k.lower(): v for k, v in reversed(msg.headers)}  # the first of each wins
    if "x-kbot-report" in heads:
        return "a kbot report (X-Kbot-Report)"
    auto = heads.get("auto-submitted", "no").strip().lower()
    if auto and auto.split(";")[0].strip() != "no":
        return f"Auto-Submitted: {auto}"
    if heads.get("precedence", "").strip().lower() in _AUTO_PRECEDENCE:
        return f"Precedence: {heads['precedence'].strip()}"
    if "x-autoreply" in heads or "x-autorespond" in heads:
        return "an auto-reply (X-Autoreply)"
    if sender.partition("@")[0] in _BOUNCE_SENDERS:
        return f"a bounce (from {sender})"
    if "multipart/report" in heads.get("content-type", "").lower():
        return "a delivery report (multipart/report)"
    return ""


def authorize(cfg: CommandsSection, msg: Message, raw: bytes, bot_email: str,
              dnsfunc: DnsFunc = default_dnsfunc) -> Decision:
    """Obey this mail's commands? (see the module docstring)"""
    why = automatic(msg, bot_email)
    if why:
        return Decision(False, f"not obeyed: {why}")
    sender = msg.sender.email
    if not sender or not allowed(sender, cfg.allow):
        return Decision(False, f"sender {sender or '(none)'} is not on commands.allow")
    result = check_dkim(raw, sender, dnsfunc)
    if result.status is DkimStatus.FAIL:
        return Decision(False, result.detail, result)
    if result.status is DkimStatus.NONE and dkim_required(sender, cfg.require_dkim):
        return Decision(False, f"commands.require_dkim names {_domain_of(sender)}: "
                        f"{result.detail}", result)
    return Decision(True, f"{sender} is on commands.allow; {result.detail}", result)
