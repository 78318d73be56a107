"""Provenance: the commit of record, and what counts as an uncommitted change."""

from __future__ import annotations

import subprocess

import lib.fileio as fileio


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


def test_book_outputs_do_not_make_the_tree_dirty_but_code_does(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "results" / "default").mkdir(parents=True)
    (repo / "lib").mkdir()
    for name in ("README.md", "results/default/ch01.json", "lib/x.py"):
        (repo / name).write_text("0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    monkeypatch.setattr(fileio, "_REPO_ROOT", repo)
    assert fileio.git_commit()["git_dirty"] is False
    # what a book run writes: the results of record and the README rendered from them
    (repo / "results" / "default" / "ch01.json").write_text("1\n")
    (repo / "README.md").write_text("1\n")
    rec = fileio.git_commit()
    assert rec["git_dirty"] is False and len(rec["git_hash"]) == 40
    (repo / "lib" / "x.py").write_text("1\n")  # a code change
    assert fileio.git_commit()["git_dirty"] is True
