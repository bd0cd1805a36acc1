"""A record names code that can be rebuilt: its commit and, for a tree with uncommitted changes, the saved diff
(tracked changes and new files under src/, configs/, scripts/) that `git apply` turns the commit into that tree."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from qpeft import provenance
from qpeft.records import find_records

REPO = Path(__file__).resolve().parents[1]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_the_diff_rebuilds_the_tree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    git(tmp_path, "init", "-q", str(repo))
    git(repo, "config", "user.email", "t@t")
    git(repo, "config", "user.name", "t")
    (repo / "src" / "a.py").write_text("x = 1\n")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "REPO", repo)
    clean = provenance.code_state()
    assert clean.diff == "" and clean.label == clean.commit and clean.diff_sha256 is None

    (repo / "src" / "a.py").write_text("x = 2\n")  # a tracked change
    (repo / "README.md").write_text("changed\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "new.yaml").write_text("lr: 0.1\n")  # a new file the run reads
    (repo / "notes.txt").write_text("not code\n")  # untracked outside the code folders: not part of the code
    dirty = provenance.code_state()
    assert dirty.label == dirty.commit + "+dirty"
    assert dirty.diff_sha256 == hashlib.sha256(dirty.diff.encode()).hexdigest()

    rebuilt = tmp_path / "rebuilt"
    git(tmp_path, "clone", "-q", str(repo), str(rebuilt))
    git(rebuilt, "checkout", "-q", dirty.commit)
    (tmp_path / "code.diff").write_text(dirty.diff)
    git(rebuilt, "apply", str(tmp_path / "code.diff"))
    for name in ("src/a.py", "README.md", "configs/new.yaml"):
        assert (rebuilt / name).read_text() == (repo / name).read_text()
    assert not (rebuilt / "notes.txt").exists()


def test_claim_study_records_come_from_committed_code():
    """Every record of the claim study names a commit of this repository's history and no uncommitted diff."""
    records = find_records(REPO / "results" / "records" / "claim_minilm")
    shallow = git(REPO, "rev-parse", "--is-shallow-repository").strip() == "true"
    for path in records:
        record = json.loads(path.read_text())
        commit = record.get("git_commit") or ""
        assert commit and not commit.endswith("+dirty") and not record.get("code_diff_sha256"), path
        known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO).returncode == 0
        if not known and shallow:
            pytest.skip(f"a shallow clone cannot tell whether {commit} is in the history")
        assert known, f"{path}: commit {commit} is not in this repository's history"


# The GPU claim runs (scripts/gpu_claim.sh, docs/claim.md): the device's copy of the checkout carried an older .git
# (9a68c80) under the tree of commit 808ac6b, so the records name 9a68c80+dirty and the diff between the two.
GPU_RECORDS = ("claim_gpu_sst2", "9a68c80d4ef21bdfa70e9c6bc52fb5311ab26334", "808ac6b")


def test_gpu_claim_records_are_the_tree_of_a_commit(tmp_path, monkeypatch):
    """The diff hash every GPU claim record carries is the one that turns its named commit into the tree of a later
    commit: their code is that commit's, rebuilt here (a clone at the named commit, the later tree over it)."""
    folder, base, tree = GPU_RECORDS
    records = [json.loads(p.read_text()) for p in find_records(REPO / "results" / "records" / folder)]
    assert records and {r["git_commit"] for r in records} == {base + "+dirty"}
    hashes = {r["code_diff_sha256"] for r in records}
    assert len(hashes) == 1
    for commit in (base, tree):
        if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO).returncode != 0:
            pytest.skip(f"commit {commit} is not in this clone's history (shallow)")
    rebuilt = tmp_path / "rebuilt"
    git(tmp_path, "clone", "-q", "--no-checkout", str(REPO), str(rebuilt))
    git(rebuilt, "checkout", "-q", base)
    for name in git(rebuilt, "ls-files", "-z").split("\0"):
        if name:
            (rebuilt / name).unlink()
    archive = subprocess.run(["git", "archive", tree], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(rebuilt)], input=archive, check=True)
    monkeypatch.setattr(provenance, "REPO", rebuilt)
    state = provenance.code_state()
    assert state.label == base + "+dirty" and state.diff_sha256 == hashes.pop()
