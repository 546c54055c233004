"""`preble bench report`: rewrite every generated region and rendered report from the committed
JSON, or (check) say where the Markdown differs from what the JSON renders.

Two kinds of generated Markdown:
- regions (`regions.py`) in `README.md` and in any Markdown under `results/`, each written by the
  renderer `registry.REGIONS` names for it;
- rendered reports: the `.md` beside a results JSON, written whole by the benchmark that made the
  JSON (`registry.REPORTS`), as the benchmark wrote it when it ran.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .regions import regions, rewrite
from .registry import REGIONS, REPORTS
from .results import load

MARKDOWN = ("README.md", "results/**/*.md")  # where regions may be, from the repository root


@dataclass(frozen=True)
class Change:
    """A file, and the part of it (a region, or the whole report) whose text the JSON renders
    differently."""

    path: str
    part: str
    old: str
    new: str

    def diff(self) -> str:
        """The change as a unified diff, labelled with the file and the part."""
        label = f"{self.path} [{self.part}]"
        return "".join(difflib.unified_diff(self.old.splitlines(keepends=True), self.new.splitlines(keepends=True),
                                            fromfile=f"{label} (committed)", tofile=f"{label} (rendered)"))


def region_renderers(root: Path) -> dict[str, Callable[[], str]]:
    """Each region name's renderer, bound to its results files under `root` (read when called)."""
    return {name: (lambda spec=spec: spec.render(*(load(root, p) for p in spec.sources)))
            for name, spec in REGIONS.items()}


def markdown_files(root: Path) -> list[Path]:
    """The Markdown files that may hold regions."""
    return sorted({p for pattern in MARKDOWN for p in root.glob(pattern)})


def region_changes(root: Path, path: Path, renderers: dict[str, Callable[[], str]]) -> tuple[str, list[Change]]:
    """`path`'s text with its regions rendered, and the regions that changed."""
    rel = path.relative_to(root).as_posix()
    text = path.read_text()
    new = rewrite(text, renderers, where=rel)
    if new == text:
        return new, []
    old_parts, new_parts = regions(text, rel), regions(new, rel)
    return new, [Change(rel, o.name, o.body, n.body) for o, n in zip(old_parts, new_parts) if o.body != n.body]


def report_renderer(rel: str) -> Callable[[dict], str] | None:
    """The `markdown` function of the benchmark that renders the report of the results file `rel`."""
    module = next((m for pattern, m in REPORTS if fnmatch.fnmatchcase(rel, pattern)), None)
    return importlib.import_module(f"preble.bench.{module}").markdown if module else None


def report_changes(root: Path) -> list[tuple[Path, str, Change]]:
    """Each rendered report that differs from its JSON's rendering: the file, its new text and the change."""
    out = []
    for json_path in sorted(root.glob("results/**/*.json")):
        md = json_path.with_suffix(".md")
        render = report_renderer(json_path.relative_to(root).as_posix())
        if render is None or not md.is_file():
            continue
        new, old = render(load(root, json_path.relative_to(root).as_posix()).data), md.read_text()
        if new != old:
            out.append((md, new, Change(md.relative_to(root).as_posix(), "whole report", old, new)))
    return out


def report(root: Path, write: bool) -> list[Change]:
    """Every change the committed JSON renders under `root`; with `write`, made in place."""
    renderers = region_renderers(root)
    changes: list[Change] = []
    for path in markdown_files(root):
        new, found = region_changes(root, path, renderers)
        if found and write:
            path.write_text(new)
        changes += found
    for path, new, change in report_changes(root):
        if write:
            path.write_text(new)
        changes.append(change)
    return changes
