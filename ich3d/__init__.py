"""ich3d: intracranial hemorrhage detection on head CT (RSNA 2019 format and clinical exports).

The front door: the pipeline's API functions, importable from the package itself::

    import ich3d
    ich3d.build_series(["rsna/stage_2_train"], "data/train", labels_csv="rsna/stage_2_train.csv")
    ich3d.fit("data/train", "runs/a", "cpu_small")
    ich3d.predict(["runs/a"], "preds/a", dicom_dirs=["rsna/stage_2_test"])
    ich3d.score_submission("preds/a/submission.csv", "labels.csv")

    predictor = ich3d.Predictor.from_runs(["runs/a"])  # loaded once, asked many times
    result = predictor.predict_folder("incoming/study-1", "out/study-1")

They are imported on first use, so ``import ich3d`` stays cheap (no torch until a function needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Front-door name -> the module that defines it.
_API = {
    "build_series": "ich3d.dataset.build",
    "BuildOptions": "ich3d.dataset.options",
    "load_index": "ich3d.dataset.index",
    "load_config": "ich3d.config",
    "fit": "ich3d.training.fit",
    "predict": "ich3d.inference.run",
    "merge": "ich3d.inference.run",
    "InferOptions": "ich3d.inference.run",
    "Predictor": "ich3d.inference.predictor",
    "RuntimeOptions": "ich3d.inference.predictor",
    "PredictOptions": "ich3d.inference.job",
    "load_trained": "ich3d.models.io",
    "Shard": "ich3d.shard",
    "score_submission": "ich3d.inference.submission",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'ich3d' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
