"""Where a patch series changed a test: a posterior over the stretch of commits in a bad state.

Commits 0..N are the base and the series' patches applied one by one. A test is in the bad state
on a window [s, e) of them (failing with an unknown rate q, FlakyModel's prior, integrated out)
and in the good state elsewhere (failing only with the model's small false_fail). The hypotheses:

    none            no commit is bad: every failure is chance
    (0, N+1)        every commit is bad: the test fails (sometimes) with or without the series
    (s, N+1), s>=1  patch s introduced the failure (NEW)
    (s, e),  1<=s<e<=N  patch s introduced it and patch e fixed it again
    (0, e),  e<=N   the base fails and patch e fixes it (FIXED)

"The series changed nothing" (the first two) holds half the prior: a failure is blamed on a patch
only when the runs outweigh the plainer story that the test is flaky anyway. Of the other half,
new failures that stay hold 3/4, fixes 3/16, and failures a later patch of the same series fixes
again 1/16 (rare, and otherwise two runs of one flaky commit look like one); within a class the
prior is uniform. Runs at every commit count, so fails after the culprit and passes
before it add up; the whole posterior is exact under the model (O(N^2) windows, prefix sums).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bot.bisect.bayes import FlakyModel

PRIOR_NONE = 0.25
PRIOR_EVERYWHERE = 0.25
PRIOR_NEW = 0.375
PRIOR_FIXED = 0.09375
PRIOR_NEW_THEN_FIXED = 0.03125


@dataclass(frozen=True)
class SeriesRunCounts:
    """Fails and passes of one test at one commit (skips left out: they are no evidence)."""

    fails: int
    passes: int


@dataclass(frozen=True)
class ChangePosterior:
    """P(window) for every window, and P(none); index 0 is the base, N + 1 means "never"."""

    patches: int  # N
    none: float
    windows: dict[tuple[int, int], float]

    @property
    def everywhere(self) -> float:
        """The test is in the same bad state at the base and after every patch."""
        return self.windows.get((0, self.patches + 1), 0.0)

    @property
    def unchanged(self) -> float:
        """The series changed nothing about this test (it passes, or fails as often, throughout)."""
        return self.none + self.everywhere

    def first_bad(self, s: int) -> float:
        """P(patch s is the first bad one: the base is good and the failure starts at s)."""
        return sum(p for (start, _), p in self.windows.items() if start == s) if s >= 1 else 0.0

    def fixed_by(self, e: int) -> float:
        """P(the base is bad and patch e is where it starts to pass)."""
        return self.windows.get((0, e), 0.0) if 1 <= e <= self.patches else 0.0


def change_posterior(counts: Sequence[SeriesRunCounts], model: FlakyModel) -> ChangePosterior:
    """The posterior over windows given the runs at commits 0..N (`counts[0]` is the base)."""
    n = len(counts) - 1
    if n < 1:
        raise ValueError("a series needs a base and at least one patch")
    pf = [0]
    pp = [0]
    for c in counts:
        pf.append(pf[-1] + c.fails)
        pp.append(pp[-1] + c.passes)
    tf, tp = pf[-1], pp[-1]
    pairs = n * (n - 1) // 2
    logs: dict[tuple[int, int] | None, float] = {
        None: math.log(PRIOR_NONE) + model.log_good(tf, tp)}
    for s in range(0, n + 1):
        for e in range(s + 1, n + 2):
            if s == 0 and e == n + 1:
                prior = PRIOR_EVERYWHERE
            elif s == 0:
                prior = PRIOR_FIXED / n
            elif e == n + 1:
                prior = PRIOR_NEW / n
            else:
                prior = PRIOR_NEW_THEN_FIXED / pairs
            f, p = pf[e] - pf[s], pp[e] - pp[s]
            logs[(s, e)] = math.log(prior) + model.log_bad(f, p) + model.log_good(tf - f, tp - p)
    top = max(logs.values())
    weights = {k: math.exp(v - top) for k, v in logs.items()}
    total = sum(weights.values())
    none = weights.pop(None) / total
    windows = {k: w / total for k, w in weights.items() if k is not None}
    return ChangePosterior(n, none, windows)
