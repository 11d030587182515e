"""Fixtures of the app tests: the tiny run's predictions of a PACS-style export (skipped series included)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def clinical_predictions(trained_run: Path, clinical_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ich3d infer`` of the clinical export: 4 studies, topograms, bone kernels, thin and contrast series and
    dose reports skipped, one series per study read (OUT/dataset holds its index and cache)."""
    from ich3d.inference.run import predict

    out = tmp_path_factory.mktemp("clinical_predictions") / "pred"
    predict([trained_run], out, dicom_dirs=[clinical_export / "export"], progress=False)
    return out
