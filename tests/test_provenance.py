"""run.json, every checkpoint and infer.json say which code, libraries and machine made them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ich3d.checkpoint import load_checkpoint, save_checkpoint
from ich3d.layout import RunFolder
from ich3d.provenance import git_state, provenance

REPOSITORY = Path(__file__).resolve().parents[1]


def test_provenance_names_versions_device_and_workers() -> None:
    facts = provenance("cpu", workers=3)
    assert facts["torch"] == torch.__version__.split("+")[0] or facts["torch"] == torch.__version__
    assert facts["monai"] and facts["pydicom"] and facts["python"] and facts["ich3d"]
    assert (facts["device"], facts["workers"]) == ("cpu", 3) and facts["device_name"]
    if not torch.cuda.is_available():
        assert facts["cuda"] is None and facts["cudnn"] is None
    json.dumps(facts)  # plain values only


@pytest.mark.skipif(not (REPOSITORY / ".git").exists() or shutil.which("git") is None, reason="not a git checkout")
def test_git_commit_of_a_checkout_and_none_outside(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert git_state(REPOSITORY)[0] == head == provenance("cpu")["git_commit"]
    assert git_state(tmp_path) == (None, None)  # an installed copy: no failure, no commit


def test_run_json_and_checkpoints_record_provenance(trained_run: Path, tmp_path: Path) -> None:
    run = RunFolder(trained_run)
    info = json.loads(run.info.read_text())["provenance"]
    assert info["torch"] and info["device"] == "cpu" and info["workers"] == 0 and "git_commit" in info
    fold = run.fold(run.folds_present()[0])
    for path in (fold.encoder, fold.model, fold.last):
        facts = load_checkpoint(path)["provenance"]
        assert facts["torch"] and facts["pydicom"] and facts["device_name"], path
    assert load_checkpoint(fold.model)["provenance"]["workers"] == 0
    save_checkpoint(tmp_path / "x.pt", {"a": 1})
    assert load_checkpoint(tmp_path / "x.pt")["provenance"]["ich3d"]
