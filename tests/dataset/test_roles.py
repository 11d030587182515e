"""Series roles from their headers, and the written-down choice of the series to predict per study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ich3d.dataset.roles import SeriesRules, assign_roles, choice_table, choose_series, load_rules
from ich3d.errors import InputError

CT = "1.2.840.10008.5.1.4.1.1.2"


def _series(**overrides: dict) -> pd.DataFrame:
    """A study as a PACS exports it: each keyword is a series (its name) with the fields that differ."""
    base = {"study_uid": "1.2.1", "modality": "CT", "sop_class_uid": CT, "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
            "series_description": "CT head", "convolution_kernel": "H31s", "contrast_agent": None,
            "slice_thickness": 5.0, "slice_spacing": 5.0, "coverage_mm": 150.0, "axial_cosine": 1.0,
            "mixed_orientation": False, "n_ok": 30, "series_number": 2}
    rows = [base | {"series_uid": name, "series_id": name} | fields for name, fields in overrides.items()]
    return pd.DataFrame(rows)


EXPORT = dict(
    thick={"series_description": "CT 5mm plain"},
    thin={"series_description": "CT 1.25mm plain", "slice_thickness": 1.25, "slice_spacing": 1.25, "n_ok": 120,
          "series_number": 3},
    bone={"series_description": "CT BONE", "convolution_kernel": "H70h", "series_number": 4},
    topogram={"series_description": "Topogram 0.6 T20s", "image_type": "ORIGINAL\\PRIMARY\\LOCALIZER", "n_ok": 2,
              "mixed_orientation": True, "axial_cosine": 0.0, "series_number": 1},
    dose={"series_description": "Dose Report", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "n_ok": 1},
    contrast={"series_description": "CT 5mm C+", "contrast_agent": "Iohexol 350", "series_number": 5},
    sagittal={"series_description": "Sag MPR", "image_type": "DERIVED\\SECONDARY\\MPR", "axial_cosine": 0.0},
    scout={"series_description": "scout", "image_type": None, "n_ok": 5, "coverage_mm": 40.0},
    partial={"series_description": "CT 5mm plain", "n_ok": 2, "coverage_mm": 10.0},
)


def test_every_kind_of_series_gets_its_role_and_reason() -> None:
    roles = assign_roles(_series(**EXPORT)).set_index("series_uid")
    expected = {"thick": "axial", "thin": "axial", "bone": "bone_kernel", "topogram": "localizer", "dose": "non_ct",
                "contrast": "contrast", "sagittal": "reformat", "scout": "localizer", "partial": "too_short"}
    assert roles["role"].to_dict() == expected
    assert roles.at["bone", "role_reason"] == "kernel H70h"
    assert roles.at["dose", "role_reason"] == "SOP class Secondary Capture is not a CT image"
    assert roles.at["contrast", "role_reason"] == "ContrastBolusAgent Iohexol 350"
    assert roles.at["sagittal", "role_reason"] == "planes 90 deg from axial"


@pytest.mark.parametrize(("kernel", "bone"), [("H31s", False), ("H70h", True), ("Br64\\3", True), ("Hr40", False),
                                              ("STANDARD", False), ("BONEPLUS", True), ("SOFT", False), ("YC", True),
                                              ("UB", False), ("LUNG", True), ("J40s", False), ("J70h", True)])
def test_bone_kernels_of_the_main_vendors(kernel: str, bone: bool) -> None:
    role = assign_roles(_series(s={"convolution_kernel": kernel}))["role"].iloc[0]
    assert (role == "bone_kernel") == bone


def test_the_thick_soft_non_contrast_axial_series_is_chosen() -> None:
    chosen = choose_series(assign_roles(_series(**EXPORT)), SeriesRules()).set_index("series_uid")
    assert chosen.index[chosen["predict"]].tolist() == ["thick"]
    assert chosen.at["thick", "choice"].startswith("chosen: axial, 5 mm (target 5 mm), 150 mm coverage")
    assert chosen.at["thin", "choice"] == "another series of the study is preferred"
    assert chosen.at["bone", "choice"] == "not read: bone_kernel (kernel H70h)"
    thin_model = choose_series(assign_roles(_series(**EXPORT)), SeriesRules(target_thickness=1.0)).set_index("series_uid")
    assert thin_model.index[thin_model["predict"]].tolist() == ["thin"]  # nearest the training thickness


def test_fallbacks_modes_and_overrides() -> None:
    only_contrast = choose_series(assign_roles(_series(contrast=EXPORT["contrast"], bone=EXPORT["bone"])), SeriesRules())
    assert only_contrast.set_index("series_uid")["predict"].to_dict() == {"contrast": True, "bone": False}
    everything = choose_series(assign_roles(_series(**EXPORT)), SeriesRules(mode="all")).set_index("series_uid")
    assert sorted(everything.index[everything["predict"]]) == ["bone", "contrast", "partial", "thick", "thin"]
    assert everything.at["thin", "choice"] == "predicted too (--series all)"
    ruled = choose_series(assign_roles(_series(**EXPORT)),
                          SeriesRules(exclude={"series_description": "^CT 5mm"})).set_index("series_uid")
    assert ruled.index[ruled["predict"]].tolist() == ["thin"] and ruled.at["thick", "choice"] == "excluded by --series-rules"
    by_uid = choose_series(assign_roles(_series(**EXPORT)), SeriesRules(series_uids=("bone",))).set_index("series_uid")
    assert by_uid.index[by_uid["predict"]].tolist() == ["bone"] and by_uid.at["bone", "choice"] == "chosen by --series-uid"
    with pytest.raises(InputError, match="--series-uid: 1 series not in the index, e.g. nope"):
        choose_series(assign_roles(_series(**EXPORT)), SeriesRules(series_uids=("nope",)))


def test_the_choice_is_deterministic_and_per_study() -> None:
    twins = _series(a={"study_uid": "s1"}, b={"study_uid": "s1"}, c={"study_uid": "s2", "coverage_mm": 120.0},
                    d={"study_uid": "s2"})
    first = choose_series(assign_roles(twins), SeriesRules())
    again = choose_series(assign_roles(twins.iloc[::-1]), SeriesRules())
    assert sorted(first.loc[first["predict"], "series_uid"]) == sorted(again.loc[again["predict"], "series_uid"]) == ["a", "d"]
    table = choice_table(first)
    assert table["n_studies"] == 2 and len(table["rows"]) == 4 and not table["truncated"]


def test_rule_files(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("exclude: {series_description: '(?i)c\\\\+'}\nroles: [axial]\ntarget_thickness: 2.5\n")
    rules = load_rules(path, series_uids=("x",))
    assert rules.roles == ("axial",) and rules.target_thickness == 2.5 and rules.series_uids == ("x",)
    path.write_text("exclude: {series_description: '('}\n")
    with pytest.raises(InputError, match="bad regular expression"):
        load_rules(path)
    path.write_text("prefer: thin\n")
    with pytest.raises(InputError, match="expected a mapping with keys"):
        load_rules(path)
    with pytest.raises(InputError, match="--series every"):
        SeriesRules(mode="every")


def test_a_rule_file_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("target_thickness: 5\ntarget_thickness: 1.25\n")
    with pytest.raises(InputError, match="given twice"):
        load_rules(rules)
