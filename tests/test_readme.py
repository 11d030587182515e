"""README stays true: its demo table is checked against a demo run, and its Python API example runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
CHECK = REPOSITORY / "scripts" / "check_readme_demo.py"


def _demo_json(readme: Path) -> dict:
    """A demo.json whose figures are the README's (as `ich3d demo` writes them)."""
    sys.path.insert(0, str(CHECK.parent))
    try:
        from check_readme_demo import readme_figures
    finally:
        sys.path.remove(str(CHECK.parent))
    figures = readme_figures(readme)
    valid = {name: v for name, (v, _) in figures.items()}
    test = {name: t for name, (_, t) in figures.items()}
    return {"prior_valid": valid["prevalence prior"], "slice_valid": valid["CNN, slice-only"],
            "sequence_valid": valid["CNN + GRU"], "calibrated_valid": valid["CNN + GRU, calibrated"],
            "prior_score": test["prevalence prior"], "slice_score": test["CNN, slice-only"],
            "raw_score": test["CNN + GRU"], "score": {"weighted_log_loss": test["CNN + GRU, calibrated"]},
            "tta_valid": 0.1, "calibration_fitted_on": "validation fold 0", "calibrated_labels": [], "seconds": 210.0}


def _check(demo_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(demo_dir), *args], capture_output=True, text=True,
                          cwd=REPOSITORY)


def test_check_readme_demo_passes_on_equal_figures_and_prints_the_table(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text(json.dumps(_demo_json(README)))
    done = _check(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "demo summary: weighted log loss" in done.stdout and "matches demo.json within 0.003" in done.stdout
    for row in ("prevalence prior", "CNN, slice-only", "CNN + GRU", "CNN + GRU, calibrated"):
        assert row in done.stdout


def test_check_readme_demo_fails_with_the_differences(tmp_path: Path) -> None:
    demo = _demo_json(README)
    demo["slice_score"] += 0.0166  # the stale table's error
    demo["calibrated_valid"] += 0.002  # within the tolerance
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    done = _check(tmp_path)
    assert done.returncode == 1
    assert re.search(r"1 figure\(s\) of the demo table differ .* by more than 0\.003", done.stderr)
    assert "CNN, slice-only, test: README" in done.stderr and "off by 0.0166" in done.stderr
    assert f"{demo['slice_score']:.4f}" in done.stdout  # the table to paste holds the new figure
    assert _check(tmp_path, "--tolerance", "0.02").returncode == 0
    (tmp_path / "README.md").write_text("# no table\n")
    broken = _check(tmp_path, "--readme", str(tmp_path / "README.md"))
    assert broken.returncode == 2 and "no 'demo summary: weighted log loss' table" in broken.stderr


@pytest.mark.slow
def test_python_api_example_runs(tmp_path: Path) -> None:
    """The README's Python API example, run as written in an empty folder."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    exams, loss = re.fullmatch(r"(\d+) exams; weighted log loss (\d\.\d+)\n", done.stdout).groups()
    assert int(exams) == 3 and 0 < float(loss) < 1.5
    assert (tmp_path / "preds" / "test" / "exams.csv").is_file()


def test_quickstart_keeps_its_two_commands_after_the_cpu_hint() -> None:
    text = README.read_text()
    quickstart = text[text.index("## Quickstart"):text.index("## Intended use")]
    block = re.search(r"```bash\n(.*?)```", quickstart, re.S)
    assert block.group(1).splitlines() == ['pip install -e . && ich3d demo', 'pip install -e ".[dev]" && pytest -q']
    assert quickstart.index("download.pytorch.org/whl/cpu") < block.start()


def test_license_is_the_apache_2_text_setup_cfg_names() -> None:
    license_text = (REPOSITORY / "LICENSE").read_text()
    assert "license = Apache-2.0" in (REPOSITORY / "setup.cfg").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and "APPENDIX: How to apply the Apache License" in license_text
