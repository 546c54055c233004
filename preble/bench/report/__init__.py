"""Figures in Markdown generated from the committed results JSON (`preble bench report`).

`regions.py` reads and rewrites the generated regions of a Markdown file, `registry.py` says which
renderer writes each region from which results files, one module per results family renders them
(`engine`, `serving`, `routing`, ...), `traced.py` holds the rule every results file's provenance
follows and its exceptions, and `runner.py` applies it all to the repository.
"""

from .runner import Change, report

__all__ = ["Change", "report"]
