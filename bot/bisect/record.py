"""A bisection as a job stores it: the "bisect" step's data, written by the job runner (and
`kbot bisect`), read by the web pages and `kbot jobs show`.

The data holds the BisectResult (bot.bisect.model, via bot.codec), the candidate commits in
topological order (so untested commits can be drawn and the posterior recomputed) and the
search's model and confidence target. A bare dumped BisectResult is read too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot import codec
from bot.bisect.bayes import FlakyModel
from bot.bisect.core import BisectOptions
from bot.bisect.graph import CommitGraph
from bot.bisect.model import BisectResult, Commit

# A kernel range can hold ~15,000 candidates; past this many only the result is stored (the
# page then draws the tested commits alone), so one step row stays well under a few MB.
MAX_STORED_RANGE = 5_000


def bisect_step_data(result: BisectResult, graph: CommitGraph | None = None,
                     options: BisectOptions | None = None) -> dict[str, Any]:
    """What a bisection job stores as its "bisect" step (read back by `load_bisection`)."""
    opts = options or BisectOptions()
    rng = ([codec.dump(graph.commit(i)) for i in range(len(graph))]
           if graph is not None and len(graph) <= MAX_STORED_RANGE else [])
    return {"result": codec.dump(result), "range": rng, "model": codec.dump(opts.model),
            "confidence": opts.confidence}


@dataclass(frozen=True)
class StoredBisection:
    result: BisectResult
    range: tuple[Commit, ...]  # candidates, parents first; () when not stored
    model: FlakyModel
    confidence: float


def load_bisection(data: Any) -> StoredBisection:
    """The "bisect" step's data; InputError when it is neither form."""
    if isinstance(data, dict) and "result" in data:
        return StoredBisection(
            codec.load(BisectResult, data["result"], "bisect.result"),
            codec.load(tuple[Commit, ...], data.get("range") or [], "bisect.range"),
            codec.load(FlakyModel, data.get("model") or {}, "bisect.model"),
            float(data.get("confidence", BisectOptions().confidence)),
        )
    return StoredBisection(codec.load(BisectResult, data, "bisect"), (), FlakyModel(),
                           BisectOptions().confidence)
