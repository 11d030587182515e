"""Every file name of the folders ich3d writes: dataset, run, inference output (docs/design.md §1).

One place names them, so a reader (or a script) finds a file without reading the code that wrote
it, and no module spells a path as a string literal. Each folder kind is a small frozen dataclass
over its root; its properties are the paths. Nothing here touches the file system.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


MODEL_CARD = "model_card.md"
MODEL_CARD_JSON = "model_card.json"
_SERIES_ID = re.compile(r"[0-9a-f]{16,64}")


def cache_file_name(series_id: str) -> str:
    """File name of a series in ``cache/``: ``<series_id>.npy``. A ``series_id`` is a key the package made
    (hex digits, :func:`ich3d.dataset.identity.series_ids`), never a UID's text (docs/design.md §2).

    Raises:
        ValueError: ``series_id`` is not such a key (a UID passed by mistake).
    """
    if not _SERIES_ID.fullmatch(str(series_id)):
        raise ValueError(f"not a series_id (a key of index/series.parquet): {str(series_id)[:80]!r}")
    return f"{series_id}.npy"


@dataclass(frozen=True)
class SynthFolder:
    """The folder ``ich3d synth`` writes: the RSNA layout and the generator's own truth."""

    root: Path

    MASKS = "masks"

    def split(self, split: str) -> Path:
        """``stage_2_<split>/``: the DICOM files of a split (``train`` or ``test``)."""
        return self.root / f"stage_2_{split}"

    @property
    def train_labels(self) -> Path:
        """``stage_2_train.csv``: the training labels (RSNA long format)."""
        return self.root / "stage_2_train.csv"

    @property
    def sample_submission(self) -> Path:
        """``stage_2_sample_submission.csv``: the rows a test submission must have."""
        return self.root / "stage_2_sample_submission.csv"

    @property
    def summary(self) -> Path:
        """``synth.json``: settings, counts, which series carry which quirk (its presence marks synthetic data)."""
        return self.root / "synth.json"

    @property
    def test_labels(self) -> Path:
        """``stage_2_test_labels.csv``: the labels of every test file (RSNA long format)."""
        return self.root / "stage_2_test_labels.csv"

    @property
    def masks(self) -> Path:
        """``masks/``: one lesion-mask volume per series (both splits)."""
        return self.root / self.MASKS

    def mask_file(self, series_uid: str) -> Path:
        """``masks/<series UID>.npz``: the generator's own UIDs (digits and dots under pydicom's root)."""
        if not re.fullmatch(r"[0-9A-Za-z._-]{1,128}", series_uid):
            raise ValueError(f"not a series UID of ich3d synth: {series_uid[:80]!r}")
        return self.masks / f"{series_uid}.npz"


@dataclass(frozen=True)
class DatasetFolder:
    """The folder ``ich3d build-series`` writes (docs/design.md §1-2)."""

    root: Path

    INDEX = "index"
    CACHE = "cache"

    @property
    def slices(self) -> Path:
        """``index/slices.parquet``: one row per image."""
        return self.root / self.INDEX / "slices.parquet"

    @property
    def series(self) -> Path:
        """``index/series.parquet``: one row per series."""
        return self.root / self.INDEX / "series.parquet"

    @property
    def headers(self) -> Path:
        """``index/headers.parquet``: the header pass's rows as read (the index is derived from them)."""
        return self.root / self.INDEX / "headers.parquet"

    @property
    def pixel_failures(self) -> Path:
        """``index/pixel_failures/``: the pixel pass's journals and failure tables, one per part."""
        return self.root / self.INDEX / "pixel_failures"

    def journal(self, part_id: int) -> Path:
        return self.pixel_failures / f"part-{part_id}.jsonl"

    def failures(self, part_id: int) -> Path:
        return self.pixel_failures / f"part-{part_id}.parquet"

    @property
    def crops(self) -> Path:
        """``index/crops/``: the square each series of a part was cropped to (one parquet per part)."""
        return self.root / self.INDEX / "crops"

    def crop_file(self, part_id: int) -> Path:
        return self.crops / f"part-{part_id}.parquet"

    @property
    def cache(self) -> Path:
        """``cache/``: one ``<series>.npy`` per series, int16 HU, (N, S, S)."""
        return self.root / self.CACHE

    def cache_file(self, series_id: str) -> Path:
        """``cache/<series_id>.npy`` (:func:`cache_file_name`)."""
        return self.cache / cache_file_name(series_id)

    def build_summary(self, num_parts: int = 1, part_id: int = 0) -> Path:
        """``build.json`` (``build-part-<I>.json`` for a job of several parts)."""
        return self.root / ("build.json" if num_parts == 1 else f"build-part-{part_id}.json")

    @property
    def lock(self) -> Path:
        """Held while a job writes the index (jobs of a sharded build take turns)."""
        return self.root / ".ich3d.lock"

    def part_lock(self, part_id: int) -> Path:
        """Held while a job builds part ``part_id`` of the cache."""
        return self.root / f".ich3d-part-{part_id}.lock"


@dataclass(frozen=True)
class FoldFolder:
    """``RUN/fold_<K>/``: what training one fold writes (nnU-Net's fold-in-the-path)."""

    root: Path
    fold: int

    @property
    def last(self) -> Path:
        """``last.pt``: the resume state, written atomically after every epoch."""
        return self.root / "last.pt"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``: one line per epoch of every stage."""
        return self.root / "metrics.jsonl"

    @property
    def encoder(self) -> Path:
        """``encoder.pt``: the slice stage's model (encoder + slice head: the slice-only baseline)."""
        return self.root / "encoder.pt"

    @property
    def model(self) -> Path:
        """``model.pt``: the fold's final model, enough for inference."""
        return self.root / "model.pt"

    @property
    def embeddings(self) -> Path:
        """``embeddings/``: the sequence stage's cached slice embeddings (fp16 ``.npy`` files)."""
        return self.root / "embeddings"

    def embedding_set(self, split: str) -> EmbeddingsFolder:
        """``embeddings/<split>/``: the embeddings of the fold's ``train`` or ``valid`` series."""
        return EmbeddingsFolder(self.embeddings / split)


@dataclass(frozen=True)
class EmbeddingsFolder:
    """One set of cached embeddings: a view file per test-time view, and its description written last."""

    root: Path

    @property
    def meta(self) -> Path:
        """``meta.json``: what the set was made from; written last, it marks a complete set."""
        return self.root / "meta.json"

    def view(self, view: int) -> Path:
        """``view<V>.npy``: (n_slices, F) float16 embeddings of view V (0: plain, 1: flipped)."""
        return self.root / f"view{view}.npy"


@dataclass(frozen=True)
class RunFolder:
    """The folder ``ich3d train`` writes (docs/design.md §4)."""

    root: Path

    @property
    def config(self) -> Path:
        """``config.yaml``: the fully resolved config."""
        return self.root / "config.yaml"

    @property
    def info(self) -> Path:
        """``run.json``: version, dataset and its fingerprint, folds, prior, calibration report."""
        return self.root / "run.json"

    @property
    def splits(self) -> Path:
        """``splits.json``: the folds, grouped by PatientID."""
        return self.root / "splits.json"

    @property
    def oof(self) -> Path:
        """``oof/``: out-of-fold embeddings and predictions of a multi-fold run."""
        return self.root / "oof"

    @property
    def model_card(self) -> Path:
        """``model_card.md``: what the model was trained on, how well it did, what it is for (written by train)."""
        return self.root / MODEL_CARD

    @property
    def model_card_json(self) -> Path:
        """``model_card.json``: the model card's facts, machine-readable."""
        return self.root / MODEL_CARD_JSON

    @property
    def lock(self) -> Path:
        return self.root / ".ich3d.lock"

    def fold(self, fold: int) -> FoldFolder:
        return FoldFolder(self.root / f"fold_{fold}", fold)

    def folds_present(self) -> list[int]:
        """Folds with a folder in the run, in order."""
        found = (re.fullmatch(r"fold_(\d+)", p.name) for p in self.root.glob("fold_*") if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)


@dataclass(frozen=True)
class ExportFolder:
    """The folder ``ich3d export`` writes (docs/design.md §6b): portable graphs of a run's members."""

    root: Path

    @property
    def info(self) -> Path:
        """``export.json``: what the graphs expect (windows, size, crop, TTA, calibration, thresholds, labels)."""
        return self.root / "export.json"

    def encoder(self, member: int) -> Path:
        """``member_<i>/encoder.onnx``: (M, C, S, S) windowed slices -> (M, F) features."""
        return self.root / f"member_{member}" / "encoder.onnx"

    def head(self, member: int) -> Path:
        """``member_<i>/head.onnx``: (B, N, F) features and (B, N) readable of whole series -> (B, N, 6) logits."""
        return self.root / f"member_{member}" / "head.onnx"

    @property
    def model_card(self) -> Path:
        """``model_card.md``, copied from the run."""
        return self.root / MODEL_CARD

    @property
    def model_card_json(self) -> Path:
        """``model_card.json``, copied from the run."""
        return self.root / MODEL_CARD_JSON

    @property
    def lock(self) -> Path:
        return self.root / ".ich3d.lock"


@dataclass(frozen=True)
class InferFolder:
    """The folder ``ich3d infer`` writes (docs/design.md §6)."""

    root: Path

    PARTS = "parts"

    @property
    def submission(self) -> Path:
        """``submission.csv``: RSNA format, six rows per image."""
        return self.root / "submission.csv"

    @property
    def predictions(self) -> Path:
        """``predictions.parquet``: one row per image with its identifiers and probabilities."""
        return self.root / "predictions.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "infer.json"

    @property
    def exams_csv(self) -> Path:
        return self.root / "exams.csv"

    @property
    def exams_json(self) -> Path:
        return self.root / "exams.json"

    @property
    def dataset(self) -> Path:
        """``dataset/``: the dataset built from ``--dicom-dir`` inputs."""
        return self.root / "dataset"

    @property
    def parts(self) -> Path:
        return self.root / self.PARTS

    def part(self, part_id: int, num_parts: int) -> Path:
        return self.parts / f"part-{part_id}-of-{num_parts}.parquet"

    @property
    def parts_meta(self) -> Path:
        """``parts/meta.json``: the prior and the number of parts, for ``merge``."""
        return self.parts / "meta.json"

    @property
    def score(self) -> Path:
        return self.root / "score.json"

    @property
    def report(self) -> Path:
        """``report.html``: the default page of ``ich3d report``."""
        return self.root / "report.html"

    @property
    def lock(self) -> Path:
        """Held while a job writes the merged outputs."""
        return self.root / ".ich3d.lock"

    def part_lock(self, part_id: int, num_parts: int) -> Path:
        """Held while a job predicts part ``part_id`` of ``num_parts`` (parts run side by side)."""
        return self.root / f".ich3d-part-{part_id}-of-{num_parts}.lock"


@dataclass(frozen=True)
class ClinicalExportFolder:
    """The folder ``ich3d synth --layout clinical`` writes: a PACS-style export and its truth.

    ``export/<study>/<series>/CT000000.dcm ...``: one folder per study, one per series, file names
    numbered from 0 in every series folder (``<Modality><6 digits>.dcm``: a dose report written as
    OT is ``OT000000.dcm``), so names repeat across series while the UIDs do not.
    """

    root: Path

    EXPORT = "export"

    @property
    def export(self) -> Path:
        """``export/``: the DICOM files, ``<study folder>/<series folder>/<image file>``."""
        return self.root / self.EXPORT

    def series(self, study: str, series: str) -> Path:
        """``export/<study>/<series>/``: the folder of one series."""
        return self.export / study / series

    @staticmethod
    def image_name(modality: str, number: int) -> str:
        """File name of the image ``number`` (0, 1, ...) of a series: ``CT000000.dcm``."""
        return f"{modality}{number:06d}.dcm"

    @property
    def reads(self) -> Path:
        """``reads.csv``: exam reads in the CQ500 format (``name,Category,R1:ICH,...,R3:SAH``)."""
        return self.root / "reads.csv"

    @property
    def reads_map(self) -> Path:
        """``reads_map.csv``: ``name,study_uid`` (the reads' names joined to StudyInstanceUIDs)."""
        return self.root / "reads_map.csv"

    @property
    def exam_labels(self) -> Path:
        """``exam_labels.csv``: ``study_uid`` and the six exam labels (0/1), the plain exam truth."""
        return self.root / "exam_labels.csv"

    @property
    def image_labels(self) -> Path:
        """``image_labels.csv``: RSNA long format (``<SOPInstanceUID>_<label>,0/1``) of every axial CT image."""
        return self.root / "image_labels.csv"

    @property
    def summary(self) -> Path:
        """``synth.json``: settings, every series with its expected role, every study with its chosen series."""
        return self.root / "synth.json"


@dataclass(frozen=True)
class DemoFolder:
    """The folder ``ich3d demo`` writes: every step's folder, the report and the summary."""

    root: Path

    @property
    def data(self) -> SynthFolder:
        """``rsna/``: the synthetic data in the RSNA layout."""
        return SynthFolder(self.root / "rsna")

    @property
    def dataset(self) -> Path:
        """``dataset/``: the training split built."""
        return self.root / "dataset"

    @property
    def run(self) -> RunFolder:
        return RunFolder(self.root / "run")

    @property
    def predictions(self) -> InferFolder:
        """``predictions/``: the test split read from its DICOM folder by the final, calibrated model."""
        return InferFolder(self.root / "predictions")

    @property
    def uncalibrated(self) -> InferFolder:
        return InferFolder(self.root / "predictions_uncalibrated")

    @property
    def slice_only(self) -> InferFolder:
        return InferFolder(self.root / "predictions_slice_only")

    @property
    def prior_submission(self) -> Path:
        """``predictions/prior_submission.csv``: the training prevalence as every image's prediction."""
        return self.predictions.root / "prior_submission.csv"

    @property
    def clinical(self) -> ClinicalExportFolder:
        return ClinicalExportFolder(self.root / "clinical")

    @property
    def clinical_predictions(self) -> InferFolder:
        return InferFolder(self.root / "clinical_predictions")

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        """``demo.json``: the scores and where everything is."""
        return self.root / "demo.json"



@dataclass(frozen=True)
class ServeFolder:
    """The folder ``ich3d serve --data DIR`` keeps (docs/design.md §13): received instances, the database,
    the results it sent back.

    Instances and results live under keys the node makes (a hash of the study's UID, the job number),
    never under a header value, so two studies can never share a folder (docs/design.md §11).
    """

    root: Path

    @property
    def database(self) -> Path:
        """``serve.db``: SQLite (WAL) holding instances, studies, jobs, results and deliveries."""
        return self.root / "serve.db"

    @property
    def config(self) -> Path:
        """``serve.yaml``: the resolved configuration of the last start."""
        return self.root / "serve.yaml"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    def study(self, study_key: str) -> Path:
        """``studies/<study key>/``: the received instances of one study, one file per SOPInstanceUID."""
        return self.studies / study_key

    def instance(self, study_key: str, instance_key: str) -> Path:
        """``studies/<study key>/<instance key>.dcm``."""
        return self.study(study_key) / f"{instance_key}.dcm"

    def work(self, job_id: int) -> Path:
        """``work/job-<id>/``: the ``infer`` output folder of one job (removed once answered)."""
        return self.root / "work" / f"job-{job_id}"

    def result(self, job_id: int) -> Path:
        """``results/job-<id>/``: the DICOM objects (``sr.dcm``, ``sc-<n>.dcm``) and thumbnails of a result."""
        return self.root / "results" / f"job-{job_id}"

    @staticmethod
    def result_object(folder: Path, kind: str, number: int = 1) -> Path:
        """``sr.dcm`` (kind ``sr``), ``sc-<n>.dcm`` (``sc``) or ``key-<n>.png`` (``png``) in a result folder."""
        return folder / {"sr": "sr.dcm", "sc": f"sc-{number}.dcm", "png": f"key-{number}.png"}[kind]

    @property
    def lock(self) -> Path:
        """Held while a node serves this folder (one node per folder)."""
        return self.root / ".ich3d.lock"
