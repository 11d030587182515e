"""Series grouping, ordering along the slice normal, and per-series flags, on duck-typed fake slices."""

from __future__ import annotations

import time
import types
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from ich3d.dataset.geometry import slice_normals
from ich3d.dataset.series import IOP_COLUMNS, order_slices, series_table

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def fake(z: float, number: int | None, sop: str, iop: Sequence[float] = AXIAL, series: str = "1.2.3",
         study: str = "1.2", ipp_xy: tuple[float, float] = (-100.0, -100.0), size: int = 512) -> types.SimpleNamespace:
    """A pydicom-like slice: only the attributes ordering needs."""
    return types.SimpleNamespace(ImagePositionPatient=[*ipp_xy, z], ImageOrientationPatient=list(iop),
                                 InstanceNumber=number, SOPInstanceUID=sop, SeriesInstanceUID=series,
                                 StudyInstanceUID=study, Rows=size, Columns=size)


def frame(slices: Sequence[types.SimpleNamespace]) -> pd.DataFrame:
    """Index rows (the columns the header pass writes) from fake slices."""
    rows = []
    for s in slices:
        ipp = s.ImagePositionPatient or [np.nan] * 3
        rows.append({"path": f"/data/{s.SOPInstanceUID}.dcm", "image_id": s.SOPInstanceUID, "sop_uid": s.SOPInstanceUID,
                     "patient_id": "p", "study_uid": s.StudyInstanceUID, "series_uid": s.SeriesInstanceUID,
                     "source": "/data", "instance_number": s.InstanceNumber, "rows": s.Rows, "cols": s.Columns,
                     "status": "ok", **dict(zip(("ipp_x", "ipp_y", "ipp_z"), ipp)),
                     **dict(zip(IOP_COLUMNS, s.ImageOrientationPatient))})
    out = pd.DataFrame(rows)
    out["instance_number"] = out["instance_number"].astype("Int64")
    return out


def ordered_sops(slices: Sequence[types.SimpleNamespace]) -> list[str]:
    out = order_slices(frame(slices))
    return out.loc[out["slice_index"].notna(), "sop_uid"].tolist()


def test_slice_normals() -> None:
    iop = np.array([AXIAL, (1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1)], dtype=float)
    np.testing.assert_allclose(slice_normals(iop), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)


def test_shuffled_tilted_series_is_sorted_along_its_normal() -> None:
    """Gantry tilt 20°: positions step along the tilted normal; instance numbers are deliberately wrong."""
    angle = np.deg2rad(20)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(angle), -np.sin(angle))
    normal = slice_normals(np.array([iop]))[0]
    rng = np.random.default_rng(0)
    truth = [fake(0, 0, f"s{i}", iop, ipp_xy=(-100, -100)) for i in range(12)]
    for i, s in enumerate(truth):
        s.ImagePositionPatient = list(np.array([-100.0, -100.0, 0.0]) + 5.0 * i * normal)
        s.InstanceNumber = int(rng.integers(0, 100))
    shuffled = [truth[i] for i in rng.permutation(12)]
    assert ordered_sops(shuffled) == [f"s{i}" for i in range(12)]
    table = series_table(order_slices(frame(shuffled)))
    assert table.loc[0, "gantry_tilt"]  # oblique plane
    assert table.loc[0, "slice_spacing"] == pytest.approx(5.0)
    assert not table.loc[0, ["has_gaps", "has_duplicate_positions", "mixed_orientation"]].any()


def test_sheared_stack_is_flagged_as_gantry_tilt() -> None:
    """Axial orientation, but each slice shifted in y: the volume is sheared (classic gantry tilt)."""
    slices = [fake(5.0 * i, i, f"s{i}", ipp_xy=(-100, -100 + 1.5 * i)) for i in range(6)]
    table = series_table(order_slices(frame(slices)))
    assert table.loc[0, "gantry_tilt"]
    straight = series_table(order_slices(frame([fake(5.0 * i, i, f"s{i}") for i in range(6)])))
    assert not straight.loc[0, "gantry_tilt"]


def test_duplicate_positions_tie_break_by_instance_number_then_sop() -> None:
    slices = [fake(10, 2, "b"), fake(0, 1, "z"), fake(10, 1, "c"), fake(10, 1, "a"), fake(20, 0, "y")]
    assert ordered_sops(slices) == ["z", "a", "c", "b", "y"]
    table = series_table(order_slices(frame(slices)))
    assert table.loc[0, "has_duplicate_positions"] and not table.loc[0, "has_gaps"]
    assert table.loc[0, "slice_spacing"] == pytest.approx(10.0)


def test_feet_first_normal_orders_by_projection_not_by_z() -> None:
    """Row/column cosines giving a -z normal: sorted by position along the normal (z descending)."""
    iop = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    slices = [fake(z, None, f"z{z}", iop) for z in (0, 10, 5, 15)]
    assert ordered_sops(slices) == ["z15", "z10", "z5", "z0"]


def test_gap_a_tilt_change_and_another_image_size() -> None:
    """A tilt changed by 8 degrees stays in its stack (flagged); a slice of another size is its own stack."""
    gap = [fake(z, i, f"g{i}", series="gap") for i, z in enumerate((0, 5, 10, 25, 30))]
    mixed = [fake(5.0 * i, i, f"m{i}", series="mixed") for i in range(4)]
    mixed[2].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.99, -0.141]
    mixed[3].Rows = mixed[3].Columns = 256
    table = series_table(order_slices(frame(gap + mixed))).set_index(["series_uid", "stack"])
    assert table.loc[("gap", 0), "has_gaps"] and not table.loc[("gap", 0), "mixed_orientation"]
    assert table.loc[("mixed", 0), "mixed_orientation"] and table.loc[("mixed", 0), "n_slices"] == 3
    assert table.loc[("mixed", 1), "rows"] == 256 and table.loc[("mixed", 1), "n_slices"] == 1
    assert table.loc[("mixed", 0), "n_stacks"] == 2 and table.loc[("gap", 0), "n_slices"] == 5


@pytest.mark.parametrize(("degrees", "n_stacks"), [(0.0, 1), (21.6, 1), (45.0, 2), (90.0, 2)])
def test_stacks_split_reformats_but_not_tilt_changes(degrees: float, n_stacks: int) -> None:
    """Within one series UID, planes 21.6 deg apart (cosine 0.93, a real RSNA tilt change) stay one stack."""
    angle = np.deg2rad(degrees)
    turned = (1.0, 0.0, 0.0, 0.0, np.cos(angle), -np.sin(angle))
    slices = [fake(5.0 * i, i, f"a{i}") for i in range(4)] + [fake(5.0 * i, 9 + i, f"t{i}", turned) for i in range(3)]
    out = order_slices(frame(slices))
    assert out["series_id"].nunique() == n_stacks and (out["n_stacks"] == n_stacks).all()
    largest = out.loc[out["stack"] == 0, "sop_uid"]
    assert len(largest) == (4 if n_stacks == 2 else 7) and largest.str.startswith("a").sum() == 4


def test_slices_without_geometry_or_series_are_left_out_and_last() -> None:
    slices = [fake(5.0 * i, i, f"s{i}") for i in range(3)]
    slices.append(fake(99, None, "nogeo"))  # no position and no InstanceNumber: cannot be placed
    slices[-1].ImagePositionPatient = None
    slices.append(fake(7, 1, "noseries", series=None))
    out = order_slices(frame(slices))
    assert out["sop_uid"].tolist()[:3] == ["s0", "s1", "s2"]
    assert out["slice_index"].tolist()[:3] == [0, 1, 2]
    assert out["slice_index"].iloc[3:].isna().all() and np.isnan(out["position"].iloc[3:]).all()
    assert out["series_id"].iloc[3:].isna().all() and out.set_index("sop_uid").at["nogeo", "series_uid"] == "1.2.3"
    assert series_table(out)["n_slices"].tolist() == [3]


def test_one_series_uid_in_two_studies_becomes_two_series() -> None:
    slices = [fake(5.0 * i, i, f"a{i}", study="1.1") for i in range(3)]
    slices += [fake(5.0 * i, i, f"b{i}", study="1.2") for i in range(2)]
    table = series_table(order_slices(frame(slices))).sort_values("study_uid")
    assert table["series_uid"].tolist() == ["1.2.3", "1.2.3"]  # verbatim: the keys are made, not renamed
    assert table["n_slices"].tolist() == [3, 2] and table["study_uid"].tolist() == ["1.1", "1.2"]
    assert table["series_id"].is_unique and table["cache_file"].is_unique
    assert (table["cache_file"] == "cache/" + table["series_id"] + ".npy").all()


def test_series_table_counts_labels_and_ok_slices() -> None:
    rows = order_slices(frame([fake(5.0 * i, i, f"s{i}") for i in range(4)]))
    rows["status"] = ["ok", "corrupt", "ok", "ok"]
    rows["label_any"] = np.array([1.0, 0.0, np.nan, 1.0], dtype=np.float32)
    table = series_table(rows)
    assert table.loc[0, ["n_slices", "n_ok", "n_labeled", "n_any"]].tolist() == [4, 3, 3, 2]
    assert table.loc[0, "slice_spacing"] == pytest.approx(5.0)


def test_order_is_vectorised_enough_for_rsna_scale() -> None:
    """20,000 series x 38 slices (RSNA stage 2 train) must not take minutes: a 1/20 sample in < 5 s."""
    n_series, n = 1000, 38
    rng = np.random.default_rng(0)
    z = np.tile(np.arange(n) * 5.0, n_series)
    data = {"series_uid": np.repeat([f"1.2.{i}" for i in range(n_series)], n),
            "study_uid": np.repeat([f"1.{i}" for i in range(n_series)], n),
            "sop_uid": [f"s{i}" for i in range(n_series * n)], "path": [f"/p/{i}" for i in range(n_series * n)],
            "instance_number": rng.integers(0, 50, n_series * n), "ipp_x": -100.0, "ipp_y": -100.0, "ipp_z": z,
            "iop_rx": 1.0, "iop_ry": 0.0, "iop_rz": 0.0, "iop_cx": 0.0, "iop_cy": 1.0, "iop_cz": 0.0,
            "rows": 512, "cols": 512, "status": "ok", "patient_id": "p", "source": "s"}
    index = pd.DataFrame(data).sample(frac=1, random_state=0)
    began = time.perf_counter()
    table = series_table(order_slices(index))
    assert time.perf_counter() - began < 5
    assert len(table) == n_series and (table["n_slices"] == n).all() and not table["has_gaps"].any()
