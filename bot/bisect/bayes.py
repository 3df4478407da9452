"""Bayesian culprit search for flaky tests.

Model: exactly one candidate c is the first bad commit; a commit is in the bad state iff c is one
of its ancestors (itself included). A run on a bad-state commit fails with probability q, unknown
and the same for every bad commit, with a Beta(a, b) prior; a run on a good-state commit fails
with a small known probability eps (tests that fail rarely for unrelated reasons). q is integrated
out analytically, so the posterior of c given every run so far is exact under the model:

    P(c | runs) ~ B(a + F_c, b + P_c) / B(a, b) * eps^(F - F_c) * (1 - eps)^(P - P_c)

where F_c, P_c count the failures and passes seen on commits that descend from c.

The next commit is the one whose next run tells the most about c (mutual information between the
run's outcome and c); runs are one at a time, so the number of runs at a commit is simply how
often the search comes back to it, and each decision sees every earlier outcome.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from bot.bisect.graph import CommitGraph

# Below this many bits of expected information per run, more runs cannot separate the
# remaining candidates (typically a culprit next to untestable commits): stop as inconclusive.
MIN_GAIN_BITS = 2e-3


@dataclass(frozen=True)
class FlakyModel:
    # Beta prior on a bad commit's failure rate, mean 0.4: leaning to rarer failures keeps the
    # reported confidence honest for a test failing half the time (bench/bisection.py: with a
    # uniform prior, "0.95" was right 93% of the time there; with this one 99%), for ~1 more run.
    prior_fail_a: float = 1.0
    prior_fail_b: float = 1.5
    false_fail: float = 0.01  # how often a good commit fails anyway
    # Prior weight of "a bad commit fails every run" (but for a false pass as rare as a false
    # fail), the rest going to the Beta prior. Most kernel test regressions are deterministic:
    # with weight on that, two fails at a commit make a pass at its parent strong evidence that
    # the parent is good, which a Beta prior alone never allows (a pass is always plausible for
    # a bad commit failing some unknown fraction of runs). 0 keeps the pure Beta prior (the
    # bisection search, calibrated in bench/bisection.py).
    deterministic: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.false_fail < 0.5:
            raise ValueError("false_fail must be in (0, 0.5)")
        if self.prior_fail_a <= 0 or self.prior_fail_b <= 0:
            raise ValueError("Beta prior parameters must be positive")
        if not 0.0 <= self.deterministic < 1.0:
            raise ValueError("deterministic must be in [0, 1)")

    def log_bad(self, fails: int, passes: int) -> float:
        """log P(these runs | every one ran on a bad commit), the failure rate integrated out."""
        a, b = self.prior_fail_a, self.prior_fail_b
        beta = _lbeta(a + fails, b + passes) - _lbeta(a, b)
        if self.deterministic <= 0.0:
            return beta
        eps = self.false_fail
        det = fails * math.log1p(-eps) + passes * math.log(eps)
        return _logaddexp(math.log(self.deterministic) + det,
                          math.log1p(-self.deterministic) + beta)

    def log_good(self, fails: int, passes: int) -> float:
        """log P(these runs | every one ran on a good commit)."""
        return fails * math.log(self.false_fail) + passes * math.log1p(-self.false_fail)

    def mean_fail(self, fails: int, passes: int) -> float:
        """The expected failure rate of a bad commit after these runs on bad commits."""
        a, b = self.prior_fail_a, self.prior_fail_b
        beta_mean = (a + fails) / (a + b + fails + passes)
        if self.deterministic <= 0.0:
            return beta_mean
        eps = self.false_fail
        det = fails * math.log1p(-eps) + passes * math.log(eps)
        w_det = math.exp(math.log(self.deterministic) + det - self.log_bad(fails, passes))
        return w_det * (1.0 - eps) + (1.0 - w_det) * beta_mean


def _h(p: float) -> float:
    """Binary entropy in bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1.0 - p) * math.log2(1.0 - p))


def _lbeta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def _logaddexp(x: float, y: float) -> float:
    top = max(x, y)
    return top + math.log(math.exp(x - top) + math.exp(y - top))


class Posterior:
    """The culprit distribution over a CommitGraph's nodes, updated run by run."""

    def __init__(self, graph: CommitGraph, model: FlakyModel) -> None:
        self.graph = graph
        self.model = model
        n = len(graph)
        self.fails_below = [0] * n  # F_c
        self.passes_below = [0] * n  # P_c
        self.total_fails = 0
        self.total_passes = 0
        self._probs: list[float] | None = None
        self._gains: list[float] | None = None

    def observe(self, node: int, fails: int, passes: int) -> None:
        """Runs made on candidate `node`."""
        if fails == 0 and passes == 0:
            return
        for c in self.graph.ancestors(node):
            self.fails_below[c] += fails
            self.passes_below[c] += passes
        self.total_fails += fails
        self.total_passes += passes
        self._probs = None
        self._gains = None

    def observe_outside(self, fails: int, passes: int) -> None:
        """Runs on a commit outside the candidates that is good under every hypothesis."""
        self.total_fails += fails
        self.total_passes += passes
        self._probs = None
        self._gains = None

    def probs(self) -> list[float]:
        if self._probs is None:
            m = self.model
            tf, tp = self.total_fails, self.total_passes
            logs = [
                m.log_bad(f, p) + m.log_good(tf - f, tp - p)
                for f, p in zip(self.fails_below, self.passes_below, strict=True)
            ]
            top = max(logs)
            ws = [math.exp(x - top) for x in logs]
            total = sum(ws)
            self._probs = [w / total for w in ws]
        return self._probs

    def best(self) -> tuple[int, float]:
        ps = self.probs()
        i = max(range(len(ps)), key=ps.__getitem__)
        return i, ps[i]

    def credible_set(self, mass: float) -> list[int]:
        """Fewest nodes whose probability adds up to `mass`, most likely first."""
        ps = self.probs()
        order = sorted(range(len(ps)), key=lambda i: -ps[i])
        out: list[int] = []
        acc = 0.0
        for i in order:
            out.append(i)
            acc += ps[i]
            if acc >= mass:
                break
        return out

    def entropy_bits(self) -> float:
        return -sum(p * math.log2(p) for p in self.probs() if p > 0)

    def gains(self) -> list[float]:
        """Expected information (bits) about the culprit from one more run at each node."""
        if self._gains is None:
            self._gains = self._compute_gains()
        return self._gains

    def _compute_gains(self) -> list[float]:
        ps = self.probs()
        m = self.model
        eps = m.false_fail
        mean_q = [m.mean_fail(f, p)
                  for f, p in zip(self.fails_below, self.passes_below, strict=True)]
        s = self.graph.ancestor_sums(ps)
        sq = self.graph.ancestor_sums([p * q for p, q in zip(ps, mean_q, strict=True)])
        sh = self.graph.ancestor_sums([p * _h(q) for p, q in zip(ps, mean_q, strict=True)])
        h_eps = _h(eps)
        out = []
        for x in range(len(ps)):
            good_mass = max(0.0, 1.0 - s[x])
            p_fail = sq[x] + good_mass * eps
            out.append(_h(p_fail) - sh[x] - good_mass * h_eps)
        return out

    def choose(self, k: int, exclude: Collection[int]) -> list[int]:
        """Up to k distinct nodes to run next; [] when no run would tell anything."""
        gains = self.gains()
        allowed = [x for x in range(len(gains)) if x not in exclude]
        if not allowed:
            return []
        best = max(allowed, key=lambda x: (gains[x], -x))
        if gains[best] < MIN_GAIN_BITS:
            return []
        if k == 1:
            return [best]
        # A batch cannot adapt within itself: spread it over the posterior's quantiles (the
        # flaky analogue of a (k+1)-way split), keeping the single best point in it.
        s = self.graph.ancestor_sums(self.probs())
        picks = [best]
        for j in range(1, k + 1):
            if len(picks) >= k:
                break
            target = j / (k + 1)
            rest = [x for x in allowed if x not in picks and gains[x] >= MIN_GAIN_BITS]
            if not rest:
                break
            picks.append(min(rest, key=lambda x: (abs(s[x] - target), x)))
        return picks[:k]

    def expected_runs_left(self, confidence: float, gain: float) -> int:
        """A rough count for progress display: bits still missing over bits per run (a
        posterior at the target still holds about h(confidence) bits)."""
        need = max(0.0, self.entropy_bits() - _h(confidence))
        return max(1, math.ceil(need / max(gain, 0.05)))
