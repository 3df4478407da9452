"""Bisection: which commit (or which patch of a series) broke a test.

- model:      Verdict (GOOD/BAD/SKIP), Outcome, Commit, TestedCommit, BisectResult, Progress
- graph:      CommitGraph, the candidates as a DAG with git bisect's ancestry rules
- core:       Bisector (injected evaluator, hooks) driving a Bisection; deterministic, flaky
              (bayes) and K-worker rounds; endpoint checks
- bayes:      the Bayesian culprit posterior for flaky tests
- series:     SeriesVerdict: per-test new / pre-existing / fixed / flaky, first bad patch,
              named only once reproduced (which commits to boot again until then)
- windows:    the series model: posterior over the stretch of commits a test fails on
- replay:     the `git bisect replay` log
- gitgraph:   candidates read from a git repository
- evaluators: `git bisect run`-style command evaluator in scratch worktrees
- kernel_eval: build (bot.build) + one selftest in a VM (bot.vm) as an evaluator
- synth:      synthetic git histories (fast-import) for tests and benchmarks
"""
