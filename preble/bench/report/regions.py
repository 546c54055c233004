"""Generated regions of a Markdown file, and rewriting them.

A region is the text between a start marker `<!-- report:NAME -->` and the end marker
`<!-- /report -->`, each on a line of its own. The markers are HTML comments, so a rendered page
does not show them, and the name says which renderer writes the text between them
(`preble/bench/report/registry.py`). Everything outside regions is left as it is, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

START = re.compile(r"<!-- report:(?P<name>[a-z0-9][a-z0-9-]*) -->")
END = "<!-- /report -->"


class RegionError(ValueError):
    """A Markdown file whose regions cannot be read: an unknown name, a region never closed, an
    end marker with no region open, or a region opened inside another."""


@dataclass(frozen=True)
class Region:
    """One generated region: its name, the text between its markers, and where it starts."""

    name: str
    body: str
    line: int  # 1-based line of the start marker


def regions(text: str, where: str = "<text>") -> list[Region]:
    """The regions of `text`, in order; `where` names the file in errors."""
    found: list[Region] = []
    open_name, open_line, body = None, 0, []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = line.strip()
        start = START.fullmatch(marker)
        if start:
            if open_name is not None:
                raise RegionError(f"{where}:{number}: region '{start['name']}' opens inside region "
                                  f"'{open_name}' (line {open_line}), which has no '{END}' before it")
            open_name, open_line, body = start["name"], number, []
        elif marker == END:
            if open_name is None:
                raise RegionError(f"{where}:{number}: '{END}' with no region open")
            found.append(Region(open_name, "".join(body), open_line))
            open_name = None
        elif open_name is not None:
            body.append(line)
    if open_name is not None:
        raise RegionError(f"{where}:{open_line}: region '{open_name}' is not closed by '{END}'")
    return found


def rewrite(text: str, renderers: Mapping[str, Callable[[], str]], where: str = "<text>") -> str:
    """`text` with every region's body replaced by what its renderer returns (one trailing
    newline, so that the end marker keeps a line of its own). A name with no renderer is an
    error, so that a typo in a marker cannot leave stale figures unchecked."""
    for region in regions(text, where):
        if region.name not in renderers:
            raise RegionError(f"{where}:{region.line}: unknown report region '{region.name}' "
                              f"(known: {', '.join(sorted(renderers))})")
    out: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        marker = line.strip()
        start = START.fullmatch(marker)
        if start:
            out += [line, renderers[start["name"]]().rstrip("\n") + "\n"]
            inside = True
        elif marker == END:
            out.append(line)
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out)
