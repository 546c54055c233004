"""What a replica's forward passes did and how long they took, in the cost model's terms.

Each pass is cut into the quantities the cost model prices (prefill chunks, their tokens and
(token, context) pairs; decodes, their number and context), summed with the pass's measured
seconds. A router that receives these running totals in load reports can tell how fast each
worker really is against its cost model (`preble.core.routing.calibration`). The simulator keeps
the same totals from its simulated pass times, so it reports what a worker reports.
"""

from __future__ import annotations

from .messages import StepTotals
from .scheduler import SchedulerOutput

PassSplit = tuple[list[tuple[int, int]], int, int]


def split_pass(out: SchedulerOutput) -> PassSplit:
    """A pass as ([(prefill chunk tokens, tokens before it)], decodes, their context). A one-token
    chunk that samples a request's next output token is a decode; any other chunk a prefill."""
    prefills, decodes, context = [], 0, 0
    for c in out.chunks:
        if c.num_tokens == 1 and c.samples and c.request.output_token_ids:
            decodes += 1
            context += c.start + 1
        else:
            prefills.append((c.num_tokens, c.start))
    return prefills, decodes, context


class StepMeter:
    def __init__(self) -> None:
        self._sums = [0, 0.0, 0, 0, 0.0, 0, 0, 0]

    def record(self, out: SchedulerOutput, seconds: float) -> None:
        self.record_split(split_pass(out), seconds)

    def record_split(self, split: PassSplit, seconds: float) -> None:
        """Add a pass cut by `split_pass` when it was scheduled (before its tokens came back)."""
        prefills, decodes, context = split
        s = self._sums
        s[0] += 1
        s[1] += seconds
        s[2] += len(prefills)
        s[3] += sum(n for n, _ in prefills)
        s[4] += sum(n * (n + start) for n, start in prefills)
        if decodes:
            s[5] += 1
            s[6] += decodes
            s[7] += context

    @property
    def totals(self) -> StepTotals:
        return StepTotals(*self._sums)
