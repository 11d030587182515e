"""The options of ``build-series``: one typed object instead of a long signature."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ich3d.dataset.crop import CROP_MODES
from ich3d.dataset.roles import SeriesRules
from ich3d.constants import MAX_IMAGE_SIZE
from ich3d.errors import UsageError
from ich3d.shard import Shard


@dataclass(frozen=True)
class BuildOptions:
    """How ``build-series`` builds a dataset folder.

    Attributes:
        image_size: side S of the cached slices (pixels).
        crop: ``head`` crops each series to a square around the head before resizing
            (:mod:`ich3d.dataset.crop`); ``none`` resizes the whole (padded) image.
        workers: processes (None: all cores); 1 runs in this process.
        overwrite: rebuild this part's cache files even if they are finished.
        index_only: stop after writing the index.
        shard: this job's share of the pixel pass (the index is shared).
        assume_intercept: the RescaleIntercept of slices that lack it (None: they are
            ``missing_rescale`` and not used).
        series_rules: which series to predict (:mod:`ich3d.dataset.roles`); the cache holds those
            and the labeled axial CT series.
        labels_format: ``rsna`` (long ``ID,Label``) or ``ct-ich`` (PhysioNet CT-ICH per-slice CSV,
            joined to NIfTI slices by file stem and slice number).
        progress: show rich progress bars.

    Raises:
        UsageError: an unknown crop, a size outside 1..MAX_IMAGE_SIZE, a number of workers below 1.
    """

    image_size: int = 256
    crop: str = "head"
    workers: int | None = None
    overwrite: bool = False
    index_only: bool = False
    shard: Shard = field(default_factory=Shard)
    assume_intercept: float | None = None
    series_rules: SeriesRules = field(default_factory=SeriesRules)
    labels_format: str = "rsna"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise UsageError(f"--crop {self.crop}: must be one of {', '.join(CROP_MODES)}")
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:  # checked before anything is allocated
            raise UsageError(f"--image-size {self.image_size}: must be 1 to {MAX_IMAGE_SIZE} pixels")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")

    def settings(self, workers: int) -> dict[str, Any]:
        """The settings recorded in ``build.json``."""
        return {"image_size": self.image_size, "workers": workers, "overwrite": self.overwrite,
                "num_parts": self.shard.num_parts, "part_id": self.shard.part_id, "index_only": self.index_only,
                "crop": self.crop, "assume_intercept": self.assume_intercept,
                "series_rules": self.series_rules.to_dict(), "labels_format": self.labels_format}
