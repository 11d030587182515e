"""The ``ich3d`` command line: thin click wrappers over the typed API (heavy imports inside commands).

Every command is wrapped in :func:`ich3d.app.cli_options.handle_errors`: a failure the user can meet
becomes one line on stderr, ``error: what, which file, what to do``, with exit code 1 (2 for usage
errors). ``-q/--quiet`` and ``-v/--verbose`` are accepted before or after the command.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ich3d import __version__
from ich3d.app.cli_options import (
    Count,
    ExistingDir,
    ExistingFile,
    ExistingPath,
    ImageSize,
    PathArg,
    Positive,
    Probability,
    check_folds,
    check_overrides,
    console_for,
    handle_errors,
    is_quiet,
    series_options,
    set_verbosity,
    verbosity_options,
)
from ich3d.constants import EXIT_PARTIAL, MAX_IMAGE_SIZE

log = logging.getLogger("ich3d")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ich3d")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or tables; warnings and errors only.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """Intracranial hemorrhage detection on head CT (RSNA 2019 format and clinical exports)."""
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(format="%(message)s", handlers=[RichHandler(console=Console(stderr=True), show_path=False,
                                                                    show_time=False)])
    ctx.obj = {"quiet": False, "verbose": False}
    set_verbosity(ctx, quiet, verbose)


@main.command()
@click.option("--out", required=True, type=PathArg, help="Folder to write the dataset or export into.")
@click.option("--layout", "layout_name", type=click.Choice(["rsna", "clinical"]), default="rsna", show_default=True,
              help="rsna: the RSNA 2019 layout; clinical: a PACS-style export (study/series folders, "
                   "CQ500-style exam reads).")
@click.option("--n-series", default=40, show_default=True, type=Positive,
              help="Training series (rsna) or studies (clinical).")
@click.option("--n-test-series", default=10, show_default=True, type=Positive,
              help="Test series (rsna; ignored by clinical).")
@click.option("--image-size", default=512, show_default=True, type=click.IntRange(32, MAX_IMAGE_SIZE),
              help="Slice size in pixels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=1, show_default=True, type=Positive,
              help="Processes writing series (studies) in parallel.")
@verbosity_options
@click.pass_context
@handle_errors
def synth(ctx: click.Context, out: Path, layout_name: str, n_series: int, n_test_series: int, image_size: int,
          seed: int, workers: int) -> None:
    """Write a synthetic head-CT dataset in the RSNA 2019 layout, or a clinical PACS-style export."""
    from ich3d.progress import progress_bar

    if layout_name == "clinical":
        from ich3d.synth.clinical import count_files as count_clinical
        from ich3d.synth.clinical import make_clinical_export
        from ich3d.synth.clinical_plan import ClinicalConfig

        clinical = ClinicalConfig(n_studies=n_series, image_size=image_size, seed=seed)
        with progress_bar(not is_quiet(ctx), "synth", count_clinical(clinical)) as advance:
            counts = make_clinical_export(out, clinical, progress=advance, workers=workers)["counts"]
        console_for(ctx).print(f"clinical export in {out}: {counts['studies']} studies ({counts['patients']} patients, "
                            f"{counts['positive_studies']} with hemorrhage), {counts['series']} series, "
                            f"{counts['files']} files; exam truth in reads.csv", soft_wrap=True)
        return
    from ich3d.synth.generate import count_files, make_synthetic_dataset
    from ich3d.synth.plan import SynthConfig

    config = SynthConfig(n_train_series=n_series, n_test_series=n_test_series, image_size=image_size, seed=seed)
    with progress_bar(not is_quiet(ctx), "synth", count_files(config)) as advance:
        summary = make_synthetic_dataset(out, config, progress=advance, workers=workers)
    console_for(ctx).print(f"synthetic dataset in {out}: " + "; ".join(
        f"{split}: {c['images']} images, {c['series']} series, {c['positive_slices']['any']} with hemorrhage"
        for split, c in summary["splits"].items()))


@main.command("build-series")
@click.option("--dicom-dir", "dicom_dirs", multiple=True, type=ExistingDir,
              help="Folder of DICOM files and NIfTI volumes (searched recursively); repeat for several.")
@click.option("--nifti", "nifti", multiple=True, type=ExistingPath,
              help="NIfTI volume (.nii, .nii.gz) or folder of them: one series each; repeatable.")
@click.option("--labels", type=ExistingFile, help="Labels CSV (see --labels-format).")
@click.option("--labels-format", type=click.Choice(["rsna", "ct-ich"]), default="rsna", show_default=True,
              help="rsna: long format ID,Label; ct-ich: PhysioNet CT-ICH hemorrhage_diagnosis_raw_ct.csv "
                   "(PatientNumber = NIfTI file stem, SliceNumber).")
@click.option("--out", required=True, type=PathArg, help="Dataset folder to write.")
@click.option("--image-size", default=256, show_default=True, type=ImageSize, help="Side of the cached HU slices.")
@click.option("--workers", type=Positive, help="Worker processes [default: all cores].")
@click.option("--overwrite", is_flag=True,
              help="Rebuild this part's cache files even if finished (the index is rebuilt whenever the inputs change).")
@click.option("--num-parts", default=1, show_default=True, type=Positive,
              help="Split the pixel pass over this many jobs (they share one index).")
@click.option("--part-id", default=0, show_default=True, type=Count, help="This job's part (0-based).")
@click.option("--index-only", is_flag=True, help="Stop after the header index.")
@click.option("--crop", type=click.Choice(["head", "none"]), default="head", show_default=True,
              help="head: cache each series cropped to a square around the head; none: the whole image.")
@series_options
@click.option("--target-thickness", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
              help="Slice thickness (mm) --series auto prefers: the model's training thickness.")
@click.option("--assume-intercept", type=float,
              help="RescaleIntercept of CT slices that lack it (e.g. -1024) [default: such slices are not used].")
@click.option("--strict", is_flag=True, help=f"Exit with code {EXIT_PARTIAL} when any input was skipped.")
@verbosity_options
@click.pass_context
@handle_errors
def build_series_command(ctx: click.Context, dicom_dirs: tuple[Path, ...], nifti: tuple[Path, ...],
                         labels: Path | None, labels_format: str, out: Path, image_size: int, workers: int | None,
                         overwrite: bool, num_parts: int, part_id: int, index_only: bool, crop: str, series_mode: str,
                         series_rules: Path | None, series_uids: tuple[str, ...], follow_links: bool,
                         target_thickness: float, assume_intercept: float | None, strict: bool) -> None:
    """Index DICOM files and NIfTI volumes into series, choose the series to read, join labels and cache HU."""
    from ich3d.app.console import print_build_summary
    from ich3d.dataset.build import BuildOptions, build_series, require_usable
    from ich3d.shard import Shard
    from ich3d.dataset.roles import load_rules

    if not dicom_dirs and not nifti:
        raise click.UsageError("give --dicom-dir, --nifti or both")
    dicom_dirs += nifti
    rules = load_rules(series_rules, series_mode, target_thickness, series_uids)
    options = BuildOptions(image_size=image_size, crop=crop, workers=workers, overwrite=overwrite,
                           index_only=index_only, shard=Shard(num_parts, part_id), assume_intercept=assume_intercept,
                           series_rules=rules, labels_format=labels_format, progress=not is_quiet(ctx),
                           follow_links=follow_links)
    summary = build_series(list(dicom_dirs), out, labels_csv=labels, options=options)
    print_build_summary(summary, console_for(ctx))
    require_usable(summary, out)
    if summary["n_skipped"]:
        log.warning("%d of %d files were not usable (reasons in %s/build.json and the index)", summary["n_skipped"],
                    summary["n_files"], out)
    if strict and summary.get("n_skipped", 0):
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("image")
@click.option("--dataset", required=True, type=ExistingDir)
@click.option("--out", required=True, type=PathArg, help="PNG file to write.")
@click.option("--series", "series_montage", is_flag=True, help="Also draw the image's series as a montage (OUT stem + _series.png).")
@verbosity_options
@click.pass_context
@handle_errors
def show(ctx: click.Context, image: str, dataset: Path, out: Path, series_montage: bool) -> None:
    """Draw the panel figure of one image (ID or path): raw, header window, scaled, BSB."""
    from ich3d.app.viz import show_image, show_series_of_image

    written = [show_image(dataset, image, out)]
    if series_montage:
        written.append(show_series_of_image(dataset, image, out.with_name(out.stem + "_series.png")))
    console_for(ctx).print("wrote " + ", ".join(map(str, written)))


@main.command()
@click.option("--dataset", required=True, type=ExistingDir, help="Dataset folder from build-series.")
@click.option("--config", "config_path", help="YAML config or packaged name (cpu_small, rsna_256).")
@click.option("--out", required=True, type=PathArg, help="Run folder.")
@click.option("--fold", type=Count, help="Train this validation fold [default: 0; with --resume: the run's folds].")
@click.option("--folds", callback=check_folds, help="all: train every fold, the sequence head on out-of-fold features, one ensemble.")
@click.option("--set", "overrides", multiple=True, callback=check_overrides,
              help="Override a config value: key.sub=value (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@verbosity_options
@click.pass_context
@handle_errors
def train(ctx: click.Context, dataset: Path, config_path: str | None, out: Path, fold: int | None, folds: str | None,
          overrides: tuple[str, ...], resume: bool, device: str | None) -> None:
    """Train the CNN encoder and GRU head in stages (launch with torchrun for several GPUs)."""
    from ich3d.app.console import EpochTable
    from ich3d.training.fit import TrainOptions, fit

    if config_path is None and not resume:
        raise click.UsageError("--config is required (unless --resume)")
    if fold is not None and folds is not None:
        raise click.UsageError("give --fold K (one fold) or --folds all (every fold), not both")
    table = EpochTable(console_for(ctx))
    options = TrainOptions(fold=fold, folds=folds, resume=resume, device=device, progress=not is_quiet(ctx))
    result = fit(dataset, out, config_path, list(overrides), options, report=table.add)
    if os.environ.get("RANK", "0") == "0":  # torchrun: only rank 0 reports
        table.final(result, out)


@main.command()
@click.option("--run", "runs", multiple=True, required=True, type=PathArg,
              help="Run folder (all its folds), fold folder or model checkpoint; repeat to average.")
@click.option("--dataset", type=ExistingDir, help="Dataset folder from build-series.")
@click.option("--dicom-dir", "dicom_dirs", multiple=True, type=ExistingDir, help="Or DICOM folder(s) to read.")
@click.option("--nifti", "nifti", multiple=True, type=ExistingPath,
              help="Or NIfTI volume(s) (.nii, .nii.gz) or folders of them to read; repeatable.")
@click.option("--sample-submission", type=ExistingFile, help="Rows and order the submission must have.")
@click.option("--out", required=True, type=PathArg)
@click.option("--allow-missing", is_flag=True, help="Fill requested images without a file with the prior.")
@click.option("--num-parts", default=1, show_default=True, type=Positive)
@click.option("--part-id", default=0, show_default=True, type=Count)
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@click.option("--batch", "batch_series", default=8, show_default=True, type=Positive,
              help="Series per encoder batch.")
@click.option("--workers", type=Positive, help="Processes reading DICOM [default: all cores] and loader workers [default: 1].")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision on CUDA.")
@click.option("--resample", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: read series under half the training thickness as slabs of it.")
@series_options
@click.option("--threshold", type=Probability,
              help="One probability for every label's exam flag and slice ranges [default: the run's operating "
                   "thresholds, fitted on held-out exams].")
@click.option("--calibration/--no-calibration", default=True, show_default=True,
              help="Apply the models' calibration (fitted on held-out predictions).")
@click.option("--engine", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="onnxruntime: --run is a folder written by `ich3d export`.")
@verbosity_options
@click.pass_context
@handle_errors
def infer(ctx: click.Context, runs: tuple[Path, ...], dataset: Path | None, dicom_dirs: tuple[Path, ...],
          nifti: tuple[Path, ...], sample_submission: Path | None, out: Path, allow_missing: bool, num_parts: int,
          part_id: int,
          device: str | None, batch_series: int, workers: int | None, amp: bool, resample: str, series_mode: str,
          series_rules: Path | None, series_uids: tuple[str, ...], follow_links: bool, threshold: float | None,
          calibration: bool, engine: str) -> None:
    """Predict every image and every exam: submission.csv, predictions.parquet, exams.csv.

    With --dicom-dir the series choice options apply to the dataset built in OUT/dataset (target
    thickness: the models' training slice spacing); with --dataset, the dataset's own choice is used.
    """
    from ich3d.app.console import print_infer_summary
    from ich3d.dataset.roles import load_rules
    from ich3d.inference.run import InferOptions, predict
    from ich3d.shard import Shard

    custom = series_mode != "auto" or series_rules is not None or series_uids
    rules = load_rules(series_rules, series_mode, series_uids=series_uids) if custom else None
    options = InferOptions(device=device, batch_series=batch_series, workers=workers, amp=amp, resample=resample,
                           series_rules=rules, calibrate=calibration, exam_threshold=threshold,
                           allow_missing=allow_missing, shard=Shard(num_parts, part_id), follow_links=follow_links,
                           engine=engine)
    summary = predict(list(runs), out, dataset=dataset, dicom_dirs=[*dicom_dirs, *nifti],
                      sample_submission=sample_submission, options=options, progress=not is_quiet(ctx))
    print_infer_summary(summary, console_for(ctx))


@main.command()
@click.option("--out", required=True, type=ExistingDir, help="The --out folder of the infer parts.")
@click.option("--sample-submission", type=ExistingFile)
@click.option("--allow-missing", is_flag=True)
@verbosity_options
@click.pass_context
@handle_errors
def merge(ctx: click.Context, out: Path, sample_submission: Path | None, allow_missing: bool) -> None:
    """Join sharded inference parts into one submission."""
    from ich3d.app.console import print_infer_summary
    from ich3d.inference.run import merge as merge_parts

    print_infer_summary(merge_parts(out, sample_submission, allow_missing), console_for(ctx))


@main.command()
@click.argument("runs", nargs=-1, required=True, type=PathArg)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", required=True, type=PathArg, help="Export folder (graphs, export.json, model card).")
@verbosity_options
@click.pass_context
@handle_errors
def export(ctx: click.Context, runs: tuple[Path, ...], fmt: str, out: Path) -> None:
    """Export RUN (run folder, fold folder or model.pt; several: an ensemble) as ONNX graphs; run them with
    `ich3d infer --engine onnxruntime --run OUT`."""
    from ich3d.inference.export import export_run

    info = export_run(list(runs), out, fmt)
    worst = max(member["max_abs_diff"] for member in info["members"])
    console_for(ctx).print(f"exported {len(info['members'])} member(s) to {out} (ONNX opset {info['opset']}); "
                        f"probabilities within {worst:.1e} of PyTorch's on a synthetic series")


@main.command()
@click.argument("predictions", type=click.Path(exists=True, path_type=Path))
@click.option("--labels", type=ExistingFile, help="Image labels: scores submission.csv (see --labels-format).")
@click.option("--labels-format", type=click.Choice(["rsna", "ct-ich"]), default="rsna", show_default=True,
              help="rsna: long format ID,Label; ct-ich: PhysioNet hemorrhage_diagnosis_raw_ct.csv.")
@click.option("--exams", "exam_labels", type=ExistingFile,
              help="Exam labels (CQ500 reads or study_uid + labels): scores exams.csv.")
@click.option("--exam-map", type=ExistingFile, help="name,study_uid: joins CQ500 read names to studies.")
@click.option("--threshold", default=0.5, show_default=True, type=Probability,
              help="Exam probability counted as positive.")
@click.option("--dataset", type=ExistingDir, help="Dataset index for the series-level AUC.")
@click.option("--out", type=PathArg, help="JSON file for the score [default: score.json next to the predictions].")
@verbosity_options
@click.pass_context
@handle_errors
def score(ctx: click.Context, predictions: Path, labels: Path | None, labels_format: str, exam_labels: Path | None,
          exam_map: Path | None, threshold: float, dataset: Path | None, out: Path | None) -> None:
    """Score predictions (a submission.csv, or the OUT folder of infer) per image and/or per exam.

    Per image (--labels): weighted log loss, per-label log loss, AUC and ECE, series AUC. Per exam
    (--exams): per-label AUC with bootstrap 95 % CIs, sensitivity, specificity, confusion counts.
    """
    from ich3d.app.console import print_exam_score, print_score
    from ich3d.inference.submission import save_score, score_submission, series_lookup
    from ich3d.layout import InferFolder

    if labels is None and exam_labels is None:
        raise click.UsageError("give --labels (image level), --exams (exam level) or both")
    folder = InferFolder(predictions if predictions.is_dir() else predictions.parent)
    submission = folder.submission if predictions.is_dir() else predictions
    result: dict[str, Any] = {}
    if labels is not None:
        result = score_submission(submission, labels, series_lookup(submission, dataset), labels_format)
        print_score(result, console_for(ctx))
    if exam_labels is not None:
        from ich3d.inference.exam_score import score_exams

        result["exams"] = score_exams(folder.exams_csv, exam_labels, exam_map, threshold)
        print_exam_score(result["exams"], console_for(ctx))
    save_score(result, out or folder.score)


@main.command()
@click.option("--out", default="ich3d-demo", show_default=True, type=PathArg)
@click.option("--n-series", default=60, show_default=True, type=Positive, help="Synthetic training series.")
@click.option("--n-test-series", default=16, show_default=True, type=Positive)
@click.option("--config", "config_name", default="cpu_small", show_default=True)
@click.option("--set", "overrides", multiple=True, callback=check_overrides, help="Config overrides key=value.")
@click.option("--seed", default=0, show_default=True)
@verbosity_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, out: Path, n_series: int, n_test_series: int, config_name: str,
         overrides: tuple[str, ...], seed: int) -> None:
    """synth → build-series → train → infer → score on synthetic data, with the prior for comparison."""
    from ich3d.app.console import EpochTable, print_demo
    from ich3d.app.demo import DemoOptions, run_demo

    console = console_for(ctx)
    options = DemoOptions(n_series=n_series, n_test_series=n_test_series, config=config_name,
                          overrides=tuple(overrides), seed=seed)
    result = run_demo(out, options, progress=not is_quiet(ctx), report=EpochTable(console).add)
    print_demo(result, console)


@main.command("report")
@click.option("--predictions", required=True, type=ExistingDir, help="The --out folder of `ich3d infer`.")
@click.option("--labels", type=ExistingFile, help="Ground truth, RSNA long format [default: the dataset's labels].")
@click.option("--run", "runs", multiple=True, type=PathArg,
              help="The run (training curves, config) and models for Grad-CAM in the gallery; repeatable.")
@click.option("--dataset", type=ExistingDir, help="Dataset holding the images [default: PREDICTIONS/dataset].")
@click.option("--out", type=PathArg, help="HTML file to write [default: PREDICTIONS/report.html].")
@click.option("--max-series", default=24, show_default=True, type=Count, help="Series strips (the most informative series).")
@click.option("--gallery", default=4, show_default=True, type=Count, help="False positives and false negatives shown, each.")
@click.option("--device", help="Where Grad-CAM runs: cpu, cuda, cuda:1 ... [default: cuda if available]")
@verbosity_options
@click.pass_context
@handle_errors
def report_command(ctx: click.Context, predictions: Path, labels: Path | None, runs: tuple[Path, ...],
                   dataset: Path | None, out: Path | None, max_series: int, gallery: int, device: str | None) -> None:
    """Write one self-contained HTML page: scores, curves, series strips, error gallery, training, exams."""
    from ich3d.app.report import ReportOptions, write_report

    options = ReportOptions(max_series=max_series, gallery=gallery, device=device)
    result = write_report(predictions, out, labels=labels, runs=list(runs), dataset=dataset, options=options)
    console_for(ctx).print(f"wrote {result['report']} ({', '.join(result['sections'])}) in {result['seconds']:.1f} s")


@main.command()
@click.argument("image")
@click.option("--run", "runs", multiple=True, required=True, type=PathArg,
              help="Run folder, fold folder or model checkpoint; repeat to average.")
@click.option("--dataset", required=True, type=ExistingDir, help="Dataset folder holding the image.")
@click.option("--out", required=True, type=PathArg, help="PNG file to write.")
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@verbosity_options
@click.pass_context
@handle_errors
def explain(ctx: click.Context, image: str, runs: tuple[Path, ...], dataset: Path, out: Path,
            device: str | None) -> None:
    """Draw the Grad-CAM of every label of one image (ID or path) through the whole sequence model."""
    from ich3d.app.explain import explain_image

    console_for(ctx).print(f"wrote {explain_image(list(runs), dataset, image, out, device)}")


@main.command()
@click.option("--run", type=PathArg, help="Run folder (or checkpoint) whose model reads the studies.")
@click.option("--data", type=PathArg, help="The node's folder: received instances, database, results.")
@click.option("--config", "config_path", type=ExistingFile, help="YAML file with any of the settings below.")
@click.option("--port", type=int, help="DICOM port [default: 11112].")
@click.option("--ae-title", help="The node's AE title [default: ICH3D].")
@click.option("--allow-ae", multiple=True, help="Calling AE title accepted (repeatable) [default: any].")
@click.option("--destination", "destinations", multiple=True, help="AE@HOST:PORT the results go to (repeatable).")
@click.option("--stable-after", type=float, help="Seconds without a new instance that make a study complete [30].")
@click.option("--web", help="HOST:PORT of the worklist ('' turns it off) [default: 127.0.0.1:8080].")
@click.option("--device", help="cpu, cuda, cuda:1 ... [default: cuda if available]")
@click.option("--threshold", type=float, help="One operating threshold for every label [default: the run's].")
@click.option("--keep-days", type=float, help="Delete received images after this many days (results are kept).")
@verbosity_options
@click.pass_context
@handle_errors
def serve(ctx: click.Context, config_path: Path | None, **options: Any) -> None:
    """Run a DICOM node: receive head CTs (C-STORE), answer each study with an SR and key images, send them back."""
    from ich3d.serve.config import load_serve_config
    from ich3d.serve.node import serve as run_node

    options["allow_ae"] = options["allow_ae"] or None
    run_node(load_serve_config(config_path, options),
             announce=lambda text: console_for(ctx).print(text, markup=False, highlight=False))


if __name__ == "__main__":  # `python -m ich3d.app.cli`, as torchrun launches it
    main()
