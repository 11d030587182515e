"""Imports point one way (docs/design.md §8): app/serve → training → inference → data/models → dataset → core.

The layer of a module is the folder it lives in; a module directly under ``ich3d/`` is core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ich3d"
#: Layer of each part of the package; a module may import only from its own layer or lower ones.
LAYERS = {"core": 0, "dataset": 1, "data": 2, "models": 2, "inference": 3, "training": 4, "synth": 1, "app": 5,
          "serve": 5}
#: Core modules that must not import torch (fast CLI start, usable without torch).
TORCH_FREE = {"constants", "errors", "layout", "atomic", "folders", "workers", "progress", "metrics", "config",
              "spreadsheet", "yaml_unique"}


def _part(module: str) -> str:
    """``ich3d.dataset.dicom`` → "dataset"; a module directly under ``ich3d/`` is core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "core"


def _imports(path: Path) -> list[str]:
    """Every module imported by ``path``, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
FOLDERS = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_every_folder_has_a_layer() -> None:
    assert set(FOLDERS) <= set(LAYERS), f"folders without a layer: {sorted(set(FOLDERS) - set(LAYERS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_downward(path: Path) -> None:
    module = "ich3d." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    mine = LAYERS[_part(module)]
    upward = [name for name in _imports(path) if name.startswith("ich3d.") and LAYERS[_part(name)] > mine]
    assert not upward, f"{module} (layer {_part(module)}) imports from a higher layer: {upward}"


@pytest.mark.parametrize("name", sorted(TORCH_FREE) + ["dataset"])
def test_core_and_dataset_modules_import_no_torch_or_click(name: str) -> None:
    paths = sorted((PACKAGE / name).rglob("*.py")) if (PACKAGE / name).is_dir() else [PACKAGE / f"{name}.py"]
    for path in paths:
        heavy = [m for m in _imports(path) if m.split(".")[0] in ("torch", "click", "monai")]
        assert not heavy, f"{path.name} imports {heavy}"


def test_only_the_cli_imports_click() -> None:
    users = [p.name for p in MODULES if any(m.split(".")[0] == "click" for m in _imports(p))]
    assert sorted(users) == ["cli.py", "cli_options.py"]  # the commands and their shared options
