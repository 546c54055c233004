"""Figures in READMEs are the committed JSON's (`preble bench report`), and every results file
names the code it came from: the repository itself is checked, and the region parser and a
renderer are checked against hand-made inputs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from preble.bench.report import report
from preble.bench.report.engine import headline
from preble.bench.report.regions import RegionError, regions, rewrite
from preble.bench.report.registry import REGIONS
from preble.bench.report.results import Result
from preble.bench.report.traced import EXEMPT, breaks_rule, named_commits

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted(ROOT.glob("results/**/*.json"))
COMMIT_ID = re.compile(r"[0-9a-f]{7,40}")


def test_every_generated_figure_matches_the_committed_json():
    changes = report(ROOT, write=False)
    assert not changes, "run `preble bench report`:\n" + "\n".join(c.diff() for c in changes)


def test_every_region_name_in_the_registry_is_used_and_its_sources_exist():
    text = "".join(p.read_text() for p in [ROOT / "README.md", *ROOT.glob("results/**/*.md")])
    used = {r.name for r in regions(text)}
    assert set(REGIONS) == used
    assert all((ROOT / path).is_file() for spec in REGIONS.values() for path in spec.sources)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _is_commit(sha: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.parametrize("path", RESULTS, ids=_rel)
def test_a_results_file_names_a_commit_and_whether_its_tree_was_clean(path):
    rel = _rel(path)
    if rel in EXEMPT:
        pytest.skip(EXEMPT[rel].why)
    data = json.loads(path.read_text())
    commits = named_commits(data)
    bad = [c for c in commits if not (COMMIT_ID.fullmatch(c) and _is_commit(c))]
    assert not bad, f"{rel} names no commit of this repository: {bad}"
    assert breaks_rule(data) is None, f"{rel}: {breaks_rule(data)}"


def test_the_exemptions_name_existing_files_that_need_them():
    for rel in EXEMPT:
        data = json.loads((ROOT / rel).read_text())
        commits_ok = all(COMMIT_ID.fullmatch(c) and _is_commit(c) for c in named_commits(data))
        assert not commits_ok or breaks_rule(data) is not None, f"{rel} meets the rule: drop its exemption"


TEXT = """# Title

Before.
<!-- report:one -->
stale
<!-- /report -->
Between.
<!-- report:two -->
<!-- /report -->
After.
"""


def test_rewriting_replaces_only_region_bodies_and_is_idempotent():
    renderers = {"one": lambda: "fresh\n\nlines", "two": lambda: "| a |\n|---|"}
    once = rewrite(TEXT, renderers)
    assert once == TEXT.replace("stale\n", "fresh\n\nlines\n").replace(
        "two -->\n<!--", "two -->\n| a |\n|---|\n<!--")
    assert rewrite(once, renderers) == once
    assert [(r.name, r.body, r.line) for r in regions(once)] == [("one", "fresh\n\nlines\n", 4),
                                                                  ("two", "| a |\n|---|\n", 10)]


def test_an_unknown_region_name_is_an_error_that_names_the_file_line_and_known_names():
    with pytest.raises(RegionError, match=r"README.md:8: unknown report region 'two' \(known: one\)"):
        rewrite(TEXT, {"one": lambda: "x"}, where="README.md")


def test_an_unterminated_or_nested_region_is_an_error():
    with pytest.raises(RegionError, match=r"f.md:2: region 'a' is not closed"):
        regions("x\n<!-- report:a -->\ny\n", "f.md")
    with pytest.raises(RegionError, match=r"f.md:2: region 'b' opens inside region 'a' \(line 1\)"):
        regions("<!-- report:a -->\n<!-- report:b -->\n<!-- /report -->\n", "f.md")
    with pytest.raises(RegionError, match=r"f.md:1: '<!-- /report -->' with no region open"):
        regions("<!-- /report -->\n", "f.md")


def test_the_check_reports_a_drifted_region_as_a_diff_and_writing_fixes_it(tmp_path, monkeypatch):
    from preble.bench.report import runner
    from preble.bench.report.registry import Spec

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text(json.dumps({"v": 2}))
    (tmp_path / "README.md").write_text("<!-- report:x -->\nv is 1\n<!-- /report -->\n")
    monkeypatch.setattr(runner, "REGIONS", {"x": Spec(lambda r: f"v is {r.data['v']}", ("results/x.json",))})
    [change] = report(tmp_path, write=False)
    assert (change.path, change.part) == ("README.md", "x")
    assert "-v is 1\n+v is 2\n" in change.diff()
    report(tmp_path, write=True)
    assert (tmp_path / "README.md").read_text() == "<!-- report:x -->\nv is 2\n<!-- /report -->\n"
    assert report(tmp_path, write=False) == []


def _engine_run(commit: str) -> Result:
    decode = [{"batch": b, "step_ms": ms, "floor_ms": 5.0, "roofline_fraction": 5.0 / ms}
              for b, ms in ((1, 6.25), (64, 10.0))]
    return Result("results/engine/x.json", {
        "config": {"model": "random:tiny"},
        "prefill": [{"tokens": 512, "mfu": 0.30}, {"tokens": 2048, "mfu": 0.8149}, {"tokens": 8192, "mfu": 0.8351}],
        "ttft": {"new_tokens": 128, "cached_prefix": 8192, "ratio": 0.876},
        "decode": decode, "meta": {"device": "GPU X", "commit": commit}})


def test_the_engine_headline_quotes_the_json_it_is_given():
    assert headline(_engine_run("0123456789abcdef")).replace("\n", " ") == (
        "On one GPU X with `random:tiny` (random weights), one engine prefills 2k-8k tokens at 81-84% MFU, "
        "answers 128 new tokens on a cached prefix of 8,192 tokens in 0.88x the time of a cold 128-token "
        "prompt, and decodes at 50-80% of the bandwidth roofline (6.25 ms per token at batch 1; "
        "`results/engine/x.json`, the code of 0123456).")


def test_the_command_exits_1_with_a_diff_on_drift_and_2_on_a_bad_region(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from preble.bench.cli import bench_app
    from preble.bench.report import runner
    from preble.bench.report.registry import Spec

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.json").write_text(json.dumps({"v": 2}))
    (tmp_path / "README.md").write_text("<!-- report:x -->\nv is 1\n<!-- /report -->\n")
    monkeypatch.setattr(runner, "REGIONS", {"x": Spec(lambda r: f"v is {r.data['v']}", ("results/x.json",))})
    check = CliRunner().invoke(bench_app, ["report", "--check", "--root", str(tmp_path)])
    assert check.exit_code == 1 and "+v is 2" in check.output
    assert CliRunner().invoke(bench_app, ["report", "--root", str(tmp_path)]).exit_code == 0
    assert CliRunner().invoke(bench_app, ["report", "--check", "--root", str(tmp_path)]).exit_code == 0
    (tmp_path / "README.md").write_text("<!-- report:y -->\n<!-- /report -->\n")
    bad = CliRunner().invoke(bench_app, ["report", "--check", "--root", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown report region 'y'" in bad.output
