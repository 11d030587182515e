"""``ich3d report``: one self-contained HTML page with every section its inputs allow, images that
decode, no script; the most informative series first."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ich3d.app.cli import main
from ich3d.dataset.index import load_index
from ich3d.inference.run import predict
from ich3d.layout import InferFolder
from ich3d.app.report import ReportOptions, write_report
from ich3d.app.report_strips import pick_series

#: The sections of a labelled RSNA-layout dataset (one series per study: no series choice to show).
ALL_SECTIONS = ["exams", "summary", "curves", "strips", "gallery", "training", "build", "model-card"]


class _Page(HTMLParser):
    """Section ids, headings and image sources of a page, and every tag name seen."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.links: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self.sections.append(str(values["id"]))
        if tag == "img":
            self.images.append(str(values["src"]))
        self.links += [str(values[key]) for key in ("href", "src") if key in values]


@pytest.fixture(scope="module")
def predictions(trained_run: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run's predictions of its own dataset, with an exams.csv as the exam table writes it."""
    out = tmp_path_factory.mktemp("report") / "predictions"
    predict([trained_run], out, dataset=tiny_dataset, progress=False)
    frame = pd.read_parquet(InferFolder(out).predictions)
    if "study_uid" not in frame:
        frame = frame.merge(load_index(tiny_dataset)[0][["image_id", "study_uid"]], on="image_id")
    key = frame.dropna(subset=["series_id"]).sort_values("p_any").groupby("study_uid").tail(1)
    key[["study_uid", "image_id", "p_any"]].rename(columns={"image_id": "key_image_id"}).to_csv(
        InferFolder(out).exams_csv, index=False)
    return out


def _decode(source: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    return matplotlib.image.imread(io.BytesIO(base64.b64decode(source[len(prefix):])), format="png")


def test_report_holds_every_section_and_its_images_decode(predictions: Path, trained_run: Path,
                                                          tiny_dataset: Path, synthetic_rsna: Path) -> None:
    out = predictions / "page" / "report.html"
    result = CliRunner().invoke(main, ["report", "--predictions", str(predictions), "--run", str(trained_run),
                                       "--dataset", str(tiny_dataset), "--labels",
                                       str(synthetic_rsna / "stage_2_train.csv"), "--out", str(out), "--gallery", "2"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    page = _Page(text)
    assert page.sections == ALL_SECTIONS
    for title in ("Summary", "Curves", "Series strips", "Error gallery", "Training", "Exams", "Build", "Model card"):
        assert f"<h2>{title}</h2>" in text
    assert "script" not in page.tags and not [link for link in page.links if "//" in link.split(",")[0]]
    assert len(page.images) >= 3 + 1 + 2 + 1  # curves, strips, gallery, training (+ exam thumbnails)
    for source in page.images:
        image = _decode(source)
        assert image.ndim == 3 and min(image.shape[:2]) >= 16 and image.std() > 0.01
    frame = pd.read_parquet(InferFolder(predictions).predictions)
    failed = frame.loc[frame["status"] != "ok", "image_id"]
    assert len(failed) and all(image in text for image in failed)  # every file that was not read, by name
    assert "weighted log loss" in text and "ROC-AUC [95 % CI" in text and "Grad-CAM" in text
    assert "## Intended use" in text and "adult non-contrast head CT" in text  # the model card


def test_sections_follow_their_inputs(predictions: Path, tmp_path: Path) -> None:
    # the dataset was given to infer, not built in its folder: no images, no labels, no run
    result = write_report(predictions, tmp_path / "r.html", options=ReportOptions(max_series=2))
    assert result["sections"] == ["exams", "summary", "strips"]
    page = _Page((tmp_path / "r.html").read_text())
    assert page.sections == result["sections"] and len(page.images) == 2


def test_pick_series_puts_misses_first_then_false_alarms_then_loss() -> None:
    frame = pd.DataFrame({"series_id": ["miss"] * 2 + ["alarm"] * 2 + ["good"] * 2 + ["poor"] * 2,
                          "p_any": [0.2, 0.3, 0.9, 0.1, 0.9, 0.1, 0.6, 0.45]})
    for name in ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"):
        frame[f"p_{name}"] = 0.01
    truth = np.zeros((8, 6))
    truth[[0, 4, 6, 7], 0] = 1
    picked = pick_series(frame, truth, 4)
    assert [uid for uid, _ in picked] == ["miss", "alarm", "poor", "good"]
    assert picked[0][1].startswith("false negative") and picked[1][1].startswith("false positive")
    assert [uid for uid, _ in pick_series(frame, None, 2)] == ["alarm", "good"]  # by max p(any) without labels
    skipped = pd.concat([frame, frame.head(2).assign(series_id="topogram", p_any=np.nan)], ignore_index=True)
    assert "topogram" not in [uid for uid, _ in pick_series(skipped, None, 10)]  # never a series that was not read


def _strip_series(text: str) -> int:
    return text.count("<div class='strip'>")


def _read_series(predictions: Path) -> int:
    frame = pd.read_parquet(InferFolder(predictions).predictions)
    return frame.loc[frame["predicted_by"] == "model", "series_id"].nunique()


@pytest.mark.parametrize("labels", ["all", "read"])
def test_report_of_a_pacs_export_with_labels(clinical_predictions: Path, clinical_export: Path, trained_run: Path,
                                             tmp_path: Path, labels: str) -> None:
    """Skipped series (topogram, bone, thin, contrast, dose report) have labels but no probabilities: the page is
    written with the labels of every image, and with those of the read images only."""
    csv = clinical_export / "image_labels.csv"
    if labels == "read":
        frame = pd.read_parquet(InferFolder(clinical_predictions).predictions)
        read = set(frame.loc[frame["predicted_by"] == "model", "image_id"])
        table = pd.read_csv(csv)
        table[table["ID"].str.rsplit("_", n=1).str[0].isin(read)].to_csv(tmp_path / "read.csv", index=False)
        csv = tmp_path / "read.csv"
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", "--predictions", str(clinical_predictions), "--labels", str(csv),
                                       "--run", str(trained_run), "--out", str(out), "--gallery", "1"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    page = _Page(text)
    assert page.sections == ["exams", "summary", "choice", "curves", "strips", "gallery", "training", "build",
                             "model-card"]
    assert _strip_series(text) == _read_series(clinical_predictions) == 4
    assert "max p(any) nan" not in text and ">nan<" not in text
    assert ("labelled images of series that were not read left out" in text) == (labels == "all")
    assert "no interval:" in text  # 4 exams, a handful of series: no AUC interval is claimed


def test_report_without_labels_speaks_of_risk_only(clinical_predictions: Path, trained_run: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = write_report(clinical_predictions, out, runs=[trained_run], options=ReportOptions(gallery=1, heat_maps=2))
    text = out.read_text()
    assert result["sections"] == ["exams", "summary", "choice", "strips", "gallery", "training", "build", "model-card"]
    for wording in ("false negative", "false positive", "False negatives", "max p(any) nan", "labelled any"):
        assert wording not in text
    assert _strip_series(text) == _read_series(clinical_predictions)  # no empty strips of unread series
    assert "<h2>Highest p(any)</h2>" in text and "<h2>Error gallery</h2>" not in text


def test_exam_table_comes_first_flagged_by_risk_with_short_uids(clinical_predictions: Path, trained_run: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write_report(clinical_predictions, out, runs=[trained_run], options=ReportOptions(gallery=0, heat_maps=2))
    text = out.read_text()
    exams = pd.read_csv(InferFolder(clinical_predictions).exams_csv)
    table = text[text.index("<table class='exams'>"):]
    table = table[:table.index("</table>")]
    assert text.index("<section id='exams'>") < text.index("<section id='summary'>")
    rows = table.split("<tr")[2:]
    assert len(rows) == len(exams)
    flagged = [row.startswith(" class='flagged'") for row in rows]
    assert flagged == sorted(flagged, reverse=True)  # flagged studies first
    positions = [table.index(uid[-14:]) for uid in exams.sort_values("p_any", ascending=False)["study_uid"]]
    assert positions == sorted(positions)  # then by p(any), the highest first
    for uid in exams["study_uid"]:
        assert f"title='{uid}'" in table and f">…{uid[-14:]}<" in table and f"<code>{uid}</code>" in table
    assert table.count("<img") == 4 + 2  # a key slice per exam, heat maps for the first two
    choice = text[text.index("<section id='choice'>"):text.index("<section id='strips'>")]
    assert choice.count("<b>yes</b>") == len(exams) and "not read: localizer" in choice
