"""A committed results file as the renderers see it: its path and its JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Result:
    """One results file: `path` from the repository root (as the READMEs quote it) and its JSON."""

    path: str
    data: dict[str, Any]

    @property
    def name(self) -> str:
        """The file's name, which is how tables label a column or row taken from it."""
        return Path(self.path).name


def load(root: Path, path: str) -> Result:
    """The results file at `path` under the repository root `root`."""
    return Result(path, json.loads((root / path).read_text()))
