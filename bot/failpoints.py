"""Failpoints: named places where a test can make kbot die, to prove it recovers.

kbot promises that a crash at any step (the machine reboots, the OOM killer, `kill -9`) loses
nothing and repeats nothing: every ready series is recorded once, every job finishes once,
every report is delivered once or held with a reason. The fault suite (tests/faults/) checks
that promise by killing a real kbot process at each named step and restarting it. A failpoint
is one call, `hit("boot:after")`, at such a step; it does nothing unless the environment asks:

    KBOT_FAILPOINTS="boot:after@3"        SIGKILL this process at the 3rd boot:after
    KBOT_FAILPOINTS="apply:patch,report:submitted@2"   several at once (default @1)
    KBOT_FAILPOINTS="build:before@2=exit"  exit(75) instead of SIGKILL (a clean crash)

The same idea as FreeBSD's fail(9) or the `fail` crate: the cost when unset is one dict lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

ENV = "KBOT_FAILPOINTS"
EXIT_CODE = 75  # EX_TEMPFAIL: what an `=exit` failpoint exits with

_lock = threading.Lock()
_hits: dict[str, int] = {}


@dataclass(frozen=True)
class _Spec:
    name: str
    at: int
    action: str  # kill | exit


def _parse(text: str) -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = item.partition("=")
        name, _, at = name.partition("@")
        specs[name] = _Spec(name, int(at) if at.isdigit() else 1, action or "kill")
    return specs


def hit(name: str) -> None:
    """Die here if KBOT_FAILPOINTS names this point and this is the asked-for hit."""
    text = os.environ.get(ENV)
    if not text:
        return
    spec = _parse(text).get(name)
    if spec is None:
        return
    with _lock:
        _hits[name] = count = _hits.get(name, 0) + 1
    if count != spec.at:
        return
    sys.stderr.write(f"kbot: failpoint {name}@{count}: {spec.action}\n")
    sys.stderr.flush()
    if spec.action == "exit":
        os._exit(EXIT_CODE)
    os.kill(os.getpid(), signal.SIGKILL)
