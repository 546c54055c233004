"""Number formats the renderers share, so that one figure reads the same in every README."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable

SHORT_COMMIT = 7  # hex digits of a commit as READMEs quote it
LINE_WIDTH = 100  # the READMEs' prose is wrapped at this width


def prose(text: str) -> str:
    """A generated sentence wrapped as the READMEs wrap their prose (never inside a word, a
    hyphenated range or a code span's name), so that a diff of it reads like one of typed text."""
    return textwrap.fill(text, LINE_WIDTH, break_long_words=False, break_on_hyphens=False)


def span(values: Iterable[float], fmt: Callable[[float], str]) -> str:
    """The range of `values` as "low-high" in `fmt`, or one value where both ends read the same:
    the way prose quotes a spread of figures."""
    xs = sorted(values)
    low, high = fmt(xs[0]), fmt(xs[-1])
    return low if low == high else f"{low}-{high}"


def pct(x: float) -> str:
    """A fraction as a whole percentage: 0.853 -> "85%"."""
    return f"{x:.0%}"


def bare_pct(x: float) -> str:
    """A fraction as a whole percentage without its sign, for ranges written "83-85%"."""
    return f"{x * 100:.0f}"


def ratio(x: float, digits: int = 2) -> str:
    """A ratio of two latencies or rates: 1.0567 -> "1.06x"."""
    return f"{x:.{digits}f}x"


def short(commit: str) -> str:
    """A commit id as READMEs quote it."""
    return commit[:SHORT_COMMIT]


def words(items: list[str]) -> str:
    """"a", "a and b", "a, b and c": a list in a sentence."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
