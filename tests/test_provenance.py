"""Which source a result names: a copy of the tree is checked file by file against its commit's
listing, with git itself as the reference for the hashes."""

from __future__ import annotations

import os
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from preble.bench.provenance import _against_manifest, blob_hash


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=2000))
def test_blob_hash_is_gits(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("blob") / "f"
    f.write_bytes(data)
    assert blob_hash(data) == subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True,
                                             check=True).stdout.strip()


def test_a_copy_is_clean_only_if_every_listed_file_matches(tmp_path):
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    repo.mkdir()
    (repo / "pkg").mkdir()
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    (repo / "b.txt").write_text("b\n")
    os.symlink("b.txt", repo / "link")
    git = dict(cwd=repo, check=True, capture_output=True, text=True)
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "add", "-A"], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"], **git)
    manifest = tmp_path / "manifest"
    manifest.write_text(subprocess.run(["git", "ls-tree", "-r", "HEAD"], **git).stdout)
    subprocess.run(["cp", "-a", str(repo), str(copy)], check=True)
    assert _against_manifest(str(manifest), copy) == {"dirty": False}
    (copy / "untracked.txt").write_text("not in the commit: no matter\n")
    assert _against_manifest(str(manifest), copy) == {"dirty": False}
    (copy / "pkg" / "a.py").write_text("x = 2\n")
    changed = _against_manifest(str(manifest), copy)
    assert changed["dirty"] is True and len(changed["diff_sha256"]) == 16
    (copy / "pkg" / "a.py").write_text("x = 1\n")
    (copy / "b.txt").unlink()
    assert _against_manifest(str(manifest), copy)["dirty"] is True
    assert _against_manifest(None, copy) == {"dirty": None}
