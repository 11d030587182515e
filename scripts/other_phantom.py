"""A second synthetic head-CT generator, written apart from ``ich3d.synth``, to measure a recipe on data it
was not developed on.

ich3d's recipe was tuned on ``ich3d.synth``'s phantom; its shift matrix moves that phantom's settings but
keeps its anatomy, noise and lesion shapes. This generator shares none of them. A head is described
radially: each plane's outline is a superellipse whose size follows the head's craniocaudal profile, and
every layer (scalp, outer table, diploe, inner table, CSF, cortex, white matter) is a depth below it. Gyri
are an angular modulation of the cortical CSF, sulci radial clefts, the ventricles bent shapes; the skull
base has a posterior fossa, temporal fossae, air cells and a beam-hardening band; calcifications (falx,
choroid plexus, pineal) are hyperdense mimics. Noise has a band-pass spectrum and grows toward the head's
centre. Hemorrhages: an epidural lens and a subdural crescent as depth bands under the inner table that
push the brain in (a subdural may be subacute, nearly isodense, or layered); subarachnoid blood in the
sulci, fissures and cisterns of a region; an intraparenchymal clot of irregular outline with an oedema
rim; intraventricular blood layered in the dependent horns or as a cast. A slice is a 5 mm slab, the mean
of three planes, and is positive for a subtype where that subtype's blood covers at least 10 mm² of it on
average.

Files: the RSNA 2019 layout (stage_2_train/, stage_2_test/, ``ID_<hex>.dcm``, stage_2_train.csv,
stage_2_test_labels.csv, stage_2_sample_submission.csv, synth.json), written with pydicom in another
vendor's style: signed HU stored with intercept 0, real UIDs for studies and series. The same arguments
write the same files.

Usage: python scripts/other_phantom.py OUT [--train 40] [--test 24] [--image-size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import config as pydicom_config
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import gaussian_filter

LABELS = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
SUBTYPES = LABELS[1:]
#: Chance of each subtype in a positive series (at least one is drawn).
SUBTYPE_PROBABILITY = {"epidural": 0.12, "intraparenchymal": 0.4, "intraventricular": 0.25,
                       "subarachnoid": 0.4, "subdural": 0.45}  # fmt: skip
POSITIVE_FRACTION = 0.45
SLAB_MM = 5.0
#: Offsets (mm) of the planes averaged into a 5 mm slab.
SUBPLANES = (-5 / 3, 0.0, 5 / 3)
MIN_AREA_MM2 = 10.0
AIR = -1000.0


@dataclass(frozen=True)
class Head:
    """One head: outline, layers, tissue densities (HU) and the seeds of its folds, all in mm."""

    center: tuple[float, float]  # in-plane position on the table (mm from the isocentre)
    yaw: float  # in-plane rotation (rad)
    pitch: float  # tilt of the head's axial planes against the scanner's (rad)
    half_width: float  # x half-axis of the outline at its widest
    half_length: float  # y half-axis
    squareness: float  # superellipse exponent (2: an ellipse)
    top: float  # vertex above the widest plane
    scalp: float
    skull: float
    atrophy: float  # 0..1: CSF spaces grow with it
    grey: float
    white: float
    csf: float
    gyri: tuple[float, float, float, float]  # two angular frequencies and phases
    sulci: np.ndarray = field(repr=False)  # (M, 4): angle, depth (mm), width (mm), phase
    falx_plaque: tuple[float, float] | None  # (y, z) of a calcified falx plaque
    calcified_choroid: bool
    calcified_pineal: bool


@dataclass(frozen=True)
class Bleed:
    """One hemorrhage: its subtype, density (HU) and shape parameters (meaning per subtype)."""

    label: str
    hu: float
    shape: dict


def sample_head(rng: np.random.Generator) -> Head:
    """A random head."""
    m = int(rng.integers(24, 40))
    sulci = np.stack([rng.uniform(-np.pi, np.pi, m), rng.uniform(6, 16, m), rng.uniform(0.9, 1.8, m),
                      rng.uniform(0, 2 * np.pi, m)], axis=1)  # fmt: skip
    atrophy = float(rng.beta(1.5, 3))
    return Head(
        center=(float(rng.uniform(-12, 12)), float(rng.uniform(-15, 15))), yaw=float(rng.uniform(-0.15, 0.15)),
        pitch=float(rng.uniform(-0.2, 0.2)), half_width=float(rng.uniform(64, 78)),
        half_length=float(rng.uniform(82, 98)), squareness=float(rng.uniform(2.0, 2.6)),
        top=float(rng.uniform(80, 98)), scalp=float(rng.uniform(3.5, 7)), skull=float(rng.uniform(5, 8.5)),
        atrophy=atrophy, grey=float(rng.uniform(34, 42)), white=float(rng.uniform(22, 30)),
        csf=float(rng.uniform(1, 9)),
        gyri=(float(rng.integers(7, 13)), float(rng.integers(13, 23)), float(rng.uniform(0, 6.3)),
              float(rng.uniform(0, 6.3))),
        sulci=sulci,
        falx_plaque=(float(rng.uniform(-40, 40)), float(rng.uniform(10, 50))) if rng.random() < 0.3 else None,
        calcified_choroid=bool(rng.random() < 0.6), calcified_pineal=bool(rng.random() < 0.5),
    )  # fmt: skip


def sample_bleeds(rng: np.random.Generator, labels: list[str]) -> list[Bleed]:
    """One hemorrhage of each subtype in ``labels``."""
    out = []
    for label in labels:
        angle, level = float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(-5, 55))
        if label == "epidural":
            out.append(Bleed(label, float(rng.uniform(60, 90)),
                             {"angle": angle, "level": level, "span": float(rng.uniform(0.25, 0.45)),
                              "height": float(rng.uniform(15, 28)), "thickness": float(rng.uniform(6, 18)),
                              "swirl": bool(rng.random() < 0.3)}))  # fmt: skip
        elif label == "subdural":
            kind = rng.choice(["acute", "subacute", "layered"], p=[0.65, 0.15, 0.2])
            hu = {"acute": rng.uniform(55, 80), "subacute": rng.uniform(46, 56), "layered": rng.uniform(50, 65)}[kind]
            out.append(Bleed(label, float(hu),
                             {"angle": angle, "level": float(rng.uniform(-5, 45)), "span": float(rng.uniform(0.6, 1.3)),
                              "height": float(rng.uniform(25, 45)), "thickness": float(rng.uniform(2.5, 14)),
                              "layered": kind == "layered", "falcine": bool(rng.random() < 0.2)}))  # fmt: skip
        elif label == "subarachnoid":
            out.append(Bleed(label, float(rng.uniform(50, 75)),
                             {"basal": bool(rng.random() < 0.4), "angle": angle, "level": float(rng.uniform(15, 60)),
                              "span": float(rng.uniform(0.4, 0.9)), "height": float(rng.uniform(15, 30))}))  # fmt: skip
        elif label == "intraparenchymal":
            where = rng.random()
            if where < 0.4:  # deep grey matter
                side = float(rng.choice([-1, 1]))
                centre = (side * float(rng.uniform(12, 26)), float(rng.uniform(-12, 12)), float(rng.uniform(-5, 15)))
            elif where < 0.9:  # lobar
                radius, theta = rng.uniform(25, 45), rng.uniform(-np.pi, np.pi)
                centre = (float(radius * np.cos(theta)), float(1.25 * radius * np.sin(theta)),
                          float(rng.uniform(5, 50)))
            else:  # cerebellar
                centre = (float(rng.uniform(-22, 22)), float(rng.uniform(28, 40)), float(rng.uniform(-38, -25)))
            out.append(Bleed(label, float(rng.uniform(55, 90)),
                             {"centre": centre, "radius": float(rng.uniform(6, 20)),
                              "height": float(rng.uniform(8, 22)),
                              "lobes": (float(rng.uniform(0.1, 0.3)), float(rng.uniform(0, 6.3)),
                                        float(rng.uniform(0.05, 0.2)), float(rng.uniform(0, 6.3))),
                              "oedema": float(rng.uniform(1.2, 1.6))}))  # fmt: skip
        else:  # intraventricular
            out.append(Bleed(label, float(rng.uniform(50, 75)),
                             {"layered": bool(rng.random() < 0.6), "level": float(rng.uniform(14, 28)),
                              "lowest": float(rng.uniform(-30, 5))}))  # fmt: skip
    return out


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Inside the axis-aligned ellipse of centre (cx, cy) and half-axes (ax, ay), mm."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 < 1.0


def _window(value: np.ndarray, centre: float, half: float) -> np.ndarray:
    """1 at ``centre`` falling to 0 at ``centre ± half`` (a cosine bump), 0 beyond."""
    u = np.clip(np.abs(value - centre) / half, 0.0, 1.0)
    return 0.5 + 0.5 * np.cos(np.pi * u)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """The angle in [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class _Plane:
    """The head coordinates (mm) of a plane's (rows, cols) pixels: x to the patient's left, y to the back, z
    up (with the head's pitch), and their polar form in the axial plane (r, theta)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    r: np.ndarray
    theta: np.ndarray

    @staticmethod
    def of(head: Head, x_mm: np.ndarray, y_mm: np.ndarray, z_mm: float) -> _Plane:
        c, s = np.cos(head.yaw), np.sin(head.yaw)
        dx, dy = x_mm - head.center[0], y_mm - head.center[1]
        x, y = c * dx + s * dy, -s * dx + c * dy
        return _Plane(x, y, z_mm + np.tan(head.pitch) * y, np.hypot(x, y), np.arctan2(y, x))


@dataclass(frozen=True)
class _Spaces:
    """The brain of a plane and its CSF spaces (boolean maps), with the depth fields they were cut from."""

    brain: np.ndarray
    csf: np.ndarray  # every CSF space but the ventricles
    sulcal: np.ndarray
    fissure: np.ndarray
    sylvian: np.ndarray
    cisterns: np.ndarray
    ventricles: np.ndarray
    below: np.ndarray  # depth below the brain's surface, mm
    rim: np.ndarray  # thickness of the cortical CSF, mm
    gyral: np.ndarray  # 0..1: where the gyri are


def render_plane(head: Head, bleeds: list[Bleed], x_mm: np.ndarray, y_mm: np.ndarray, z_mm: float,
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """One plane of the head.

    Args:
        x_mm, y_mm: (rows, cols) patient coordinates of the pixels (mm).
        z_mm: the plane's height (mm; 0 = the head's widest plane at its centre).

    Returns:
        (rows, cols) float32 HU and a boolean (rows, cols) blood mask per subtype present.
    """
    plane = _Plane.of(head, x_mm, y_mm, z_mm)
    hu, inner, cavity, skull_base = _skull(head, plane)
    masks: dict[str, np.ndarray] = {}
    push = _extra_axial(bleeds, plane, inner, cavity, hu, masks)
    spaces = _brain(head, plane, cavity & (inner >= push), inner - push, hu)
    _intra_axial(head, bleeds, plane, spaces, hu, masks)
    if skull_base:  # beam hardening between the petrous bones: a dark band across the posterior fossa
        band = np.exp(-(((plane.y - 14) / 3.5) ** 2)) * np.clip((-12 - plane.z) / 10, 0, 1) * (plane.z > -50)
        hu = np.where(cavity, hu - 22 * band, hu)
    return hu.astype(np.float32), masks


def _skull(head: Head, plane: _Plane) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(HU with air, scalp and bone painted, depth below the inner table in mm, the intracranial cavity,
    whether the plane reaches the skull base)."""
    x, y, z, theta = plane.x, plane.y, plane.z, plane.theta
    n = head.squareness
    outline = (np.abs(np.cos(theta) / head.half_width) ** n + np.abs(np.sin(theta) / head.half_length) ** n) ** (-1 / n)
    height = np.where(z >= 0, z / head.top, z / 78.0)
    depth = outline * np.sqrt(np.clip(1 - height**2, 0.0, 1.0)) - plane.r  # below the skin, mm
    skull = head.skull * (1 + 0.25 * np.sin(2 * theta + 1.0)) * (1 + np.clip((-15 - z) / 15, 0, 2))
    inner = depth - head.scalp - skull
    hu = np.full(x.shape, AIR, dtype=np.float64)
    scalp = (depth >= 0) & (depth < head.scalp)
    hu[scalp] = np.where(np.abs(depth[scalp] - head.scalp / 2) < head.scalp / 5, -70.0, 45.0)
    bone = (depth >= head.scalp) & (inner < 0)
    through = np.clip((depth - head.scalp) / skull, 0, 1)
    diploe = 650 + 150 * np.sin(x * 1.7) * np.sin(y * 1.9)
    hu[bone] = np.where((through[bone] > 0.3) & (through[bone] < 0.7), diploe[bone], 1550.0)
    cavity = inner >= 0
    base = z < -15 - 0.004 * x**2  # the fossae's floors curve down laterally
    if base.any():  # the skull base: posterior and temporal fossae in bone, air cells
        g = np.clip(1 - ((-15 - z) / 42) ** 2, 0, 1)
        fossae = (_ellipse(x, y, 0, 30, 46, 34) & (g > 0.15) & (((x / 46) ** 2 + ((y - 30) / 34) ** 2) < g)) | (
            ((np.abs(x) - 38) / 17) ** 2 + ((y + 8) / 26) ** 2 < np.clip(1 - ((-15 - z) / 24) ** 2, 0, 1))
        base_bone = base & cavity & ~fossae
        air_cells = (_ellipse(np.abs(x), y, 46, 24, 10, 10) | _ellipse(x, y, 0, -30, 12, 10)) & (z < -28)
        hu[base_bone] = np.where(air_cells[base_bone], -850.0, 700 + 200 * np.sin(x[base_bone] * 0.9))
        cavity &= ~base_bone
    return hu, inner, cavity, bool(base.any())


def _extra_axial(bleeds: list[Bleed], plane: _Plane, inner: np.ndarray, cavity: np.ndarray, hu: np.ndarray,
                 masks: dict[str, np.ndarray]) -> np.ndarray:  # fmt: skip
    """Paints the epidural and subdural blood under the inner table into ``hu`` and ``masks``; returns the
    thickness of blood (mm) that pushes the brain in."""
    x, y, z = plane.x, plane.y, plane.z
    push = np.zeros_like(x)
    for bleed in bleeds:
        if bleed.label not in ("epidural", "subdural"):
            continue
        p = bleed.shape
        u2 = (_wrap(plane.theta - p["angle"]) / p["span"]) ** 2 + ((z - p["level"]) / p["height"]) ** 2
        if bleed.label == "epidural":
            t = p["thickness"] * np.clip(1 - u2, 0, None) ** 0.8
        else:
            t = p["thickness"] * np.sqrt(np.clip(1 - u2**2, 0, None))
        blood = cavity & (inner >= push) & (inner < push + t)
        if bleed.label == "subdural" and p["falcine"]:
            along_falx = (np.abs(y) < 50) & (np.abs(z - p["level"]) < p["height"]) & (z > 0)
            blood |= cavity & (np.abs(x) < p["thickness"] / 3) & along_falx
        value = np.full(x.shape, bleed.hu)
        if bleed.label == "epidural" and p["swirl"]:
            value -= 25 * (np.sin(x * 0.5) * np.sin(y * 0.6) > 0.5)
        if bleed.label == "subdural" and p["layered"]:
            value += np.where(y > 0, 12.0, -8.0)  # cells settled in the dependent (posterior) part
        hu[blood] = value[blood]
        push = push + np.where(cavity, t, 0)
        _add(masks, bleed.label, blood)
    return push


def _brain(head: Head, plane: _Plane, brain: np.ndarray, below: np.ndarray, hu: np.ndarray) -> _Spaces:
    """Paints grey and white matter, CSF spaces, ventricles, nuclei, posterior fossa, falx and calcifications
    of ``brain`` (the cavity below the extra-axial blood) into ``hu``; returns its spaces."""
    x, y, z, r, theta = plane.x, plane.y, plane.z, plane.r, plane.theta
    k1, k2, f1, f2 = head.gyri
    gyral = 0.5 + 0.5 * np.sin(k1 * theta + f1 + z / 7) * np.cos(k2 * theta + f2 - z / 9)
    rim = (0.8 + 2.5 * head.atrophy) * (0.5 + gyral)
    tissue = np.where(below < rim + 3.2, head.grey, head.white) + 1.5 * np.sin(x / 9 + z / 11) * np.cos(y / 13)
    csf = below < rim
    sulcal = np.zeros(x.shape, bool)
    for angle, sulcus_depth, width, phase in head.sulci:
        across = np.abs(_wrap(theta - angle)) * r
        reach = rim + sulcus_depth * (0.55 + 0.45 * np.sin(z / 6 + phase))
        sulcal |= (across < (width + head.atrophy) / 2) & (below < reach)
    csf |= sulcal
    callosum = (np.abs(y) < 30) & (z > -2) & (z < 22)
    fissure = (np.abs(x) < 1.0 + head.atrophy) & (z > -5) & ~callosum
    sylvian = (np.abs(y + 5 - 0.35 * (np.abs(x) - 35)) < 1.3 + head.atrophy) & (np.abs(x) > 25) & (z > -15) & (z < 5)
    csf |= fissure | sylvian
    grey_deep = (z > -8) & (z < 14) & (_ellipse(np.abs(x), y, 11, 8, 9, 12) | _ellipse(np.abs(x), y, 22, -6, 6, 14)
                                     | _ellipse(np.abs(x), y, 11, -14, 5, 7))  # fmt: skip
    tissue = np.where(grey_deep, head.grey - 2, tissue)
    lateral_z = np.clip(1 - ((z - 15) / 21) ** 2, 0, 1)
    bend = 7 + 3 * head.atrophy + 0.006 * (y - 5) ** 2
    ventricles = ((np.abs(x) - bend) / (3 + 7 * head.atrophy)) ** 2 + ((y - 5) / 30) ** 2 < lateral_z
    ventricles |= (np.abs(x) < 1.5 + 2 * head.atrophy) & (np.abs(y + 5) < 15) & (z > -15) & (z < 3)
    ventricles |= _ellipse(x, y, 0, 22, 4, 3) & (z > -35) & (z < -18)
    fossa_level = z < -12
    cerebellum = fossa_level & (y > 10) & _ellipse(x, y, 0, 30, 46, 34)
    tissue = np.where(cerebellum, head.grey - 3 + 3 * np.sin(r * 1.3), tissue)
    stem = fossa_level & _ellipse(x, y, 0, 8, 13, 11)
    tissue = np.where(stem, head.white + 3, tissue)
    cisterns = (z > -28) & (z < -8) & _ellipse(x, y, 0, 8, 16, 14) & ~stem
    cisterns |= (z > -18) & (z < -10) & _ellipse(x, y, 0, -8, 10, 8)
    csf |= cisterns
    hu[brain] = tissue[brain]
    hu[brain & csf] = head.csf
    hu[brain & ventricles] = head.csf
    falx = brain & (np.abs(x) < 0.4) & (z > -5) & ~callosum
    hu[falx] = 45.0
    calcified = np.zeros(x.shape, bool)
    if head.falx_plaque is not None:
        calcified |= falx & (np.abs(y - head.falx_plaque[0]) < 6) & (np.abs(z - head.falx_plaque[1]) < 5)
    if head.calcified_choroid:
        calcified |= brain & _ellipse(np.abs(x), y, 20, 22, 2.5, 2.5) & (np.abs(z - 8) < 4)
    if head.calcified_pineal:
        calcified |= brain & _ellipse(x, y, 0, 20, 2.5, 2.5) & (np.abs(z) < 3)
    hu[calcified] = 220.0
    return _Spaces(brain, csf, sulcal, fissure, sylvian, cisterns, ventricles, below, rim, gyral)


def _intra_axial(head: Head, bleeds: list[Bleed], plane: _Plane, spaces: _Spaces, hu: np.ndarray,
                 masks: dict[str, np.ndarray]) -> None:  # fmt: skip
    """Paints subarachnoid, intraparenchymal and intraventricular blood into ``hu`` and ``masks``."""
    x, y, z = plane.x, plane.y, plane.z
    brain, ventricles = spaces.brain, spaces.ventricles
    for bleed in bleeds:
        p = bleed.shape
        if bleed.label == "subarachnoid":
            if p["basal"]:
                frontal = np.abs(_wrap(plane.theta + np.pi / 2)) < 0.8
                region = (z > -30) & (z < 5) & (spaces.cisterns | spaces.sylvian | (spaces.fissure & (y < 0))
                                                | (spaces.sulcal & frontal))  # fmt: skip
            else:
                near = _window(_wrap(plane.theta - p["angle"]), 0, p["span"]) * _window(z, p["level"], p["height"])
                region = (near > 0.05) & (spaces.csf & ~ventricles)
                widened = (spaces.below < spaces.rim + 3) & (near > 0.3)
                region |= widened & (spaces.gyral > 0.6)
            blood = brain & region & ~ventricles
            hu[blood] = bleed.hu
        elif bleed.label == "intraparenchymal":
            cx, cy, cz = p["centre"]
            a1, f1, a2, f2 = p["lobes"]
            phi = np.arctan2(y - cy, x - cx)
            across = np.sqrt(np.clip(1 - ((z - cz) / p["height"]) ** 2, 0, None))
            outline_r = p["radius"] * (1 + a1 * np.sin(3 * phi + f1) + a2 * np.sin(5 * phi + f2)) * across
            distance = np.hypot(x - cx, y - cy)
            oedema = brain & (distance < outline_r * p["oedema"]) & ~ventricles & (across > 0)
            hu[oedema] = head.white - 10
            blood = brain & (distance < outline_r) & (across > 0)
            hu[blood] = bleed.hu + 8 * (1 - distance[blood] / np.maximum(outline_r[blood], 1e-3))
        elif bleed.label == "intraventricular":
            blood = brain & ventricles & (z > p["lowest"])
            if p["layered"]:
                blood &= y > p["level"]
            hu[blood] = bleed.hu
        else:
            continue
        _add(masks, bleed.label, blood)


def _add(masks: dict[str, np.ndarray], label: str, blood: np.ndarray) -> None:
    """Adds ``blood`` to the label's mask."""
    masks[label] = masks[label] | blood if label in masks else blood


def ct_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float, pixel_mm: float,
             weight: np.ndarray) -> np.ndarray:  # fmt: skip
    """Noise of a filtered back-projection: band-pass white noise of standard deviation ``sd`` HU times
    ``weight`` (higher where fewer photons pass: the head's centre)."""
    white = rng.standard_normal(shape)
    fine, coarse = 0.45 / pixel_mm, 1.6 / pixel_mm
    band = gaussian_filter(white, fine) - 0.6 * gaussian_filter(white, coarse)
    return (band / band.std() * sd * weight).astype(np.float32)


def write_series(folder: Path, split: str, index: int, seed: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Render and write one series; returns {image id: six labels} of its slices."""
    rng = np.random.default_rng([seed, 7, ["train", "test"].index(split), index])
    head = sample_head(rng)
    positive = rng.random() < POSITIVE_FRACTION
    labels: list[str] = []
    while positive and not labels:
        labels = [name for name in SUBTYPES if rng.random() < SUBTYPE_PROBABILITY[name]]
    bleeds = sample_bleeds(rng, labels)
    fov = float(rng.uniform(210, 250))
    pixel_mm = fov / image_size
    spacing = float(rng.choice([5.0, 5.0, 4.5, 5.0]))
    first = float(rng.uniform(-52, -40))
    levels = np.arange(first, head.top + 4, spacing)
    axis = (np.arange(image_size) + 0.5) * pixel_mm - fov / 2
    x_mm, y_mm = np.meshgrid(axis, axis)
    sd = float(rng.uniform(3, 9))
    smooth_px = float(rng.uniform(0.3, 0.8))
    ring = float(rng.uniform(30, 90)) if rng.random() < 0.15 else None
    patient = f"OP_{rng.integers(1 << 40):010x}"
    study = generate_uid(entropy_srcs=[str(seed), split, str(index), "study"])
    series = generate_uid(entropy_srcs=[str(seed), split, str(index), "series"])
    out = {}
    for number, level in enumerate(levels, start=1):
        planes = [render_plane(head, bleeds, x_mm, y_mm, level + offset) for offset in SUBPLANES]
        hu = np.mean([plane[0] for plane in planes], axis=0)
        inside = hu > -500
        from_centre2 = (x_mm - head.center[0]) ** 2 + (y_mm - head.center[1]) ** 2
        weight = np.where(inside, 1 + 0.6 * np.exp(-from_centre2 / 60**2), 0.35)
        hu = gaussian_filter(hu, smooth_px) + ct_noise(rng, hu.shape, sd, pixel_mm, weight)
        if ring is not None:
            hu += 5 * np.exp(-(((np.hypot(x_mm, y_mm) - ring) / 0.8) ** 2))
        area = {name: np.mean([plane[1].get(name, np.zeros(hu.shape, bool)).sum() for plane in planes]) * pixel_mm**2
                for name in SUBTYPES}  # fmt: skip
        row = tuple(int(area[name] >= MIN_AREA_MM2) for name in SUBTYPES)
        image = f"ID_{rng.integers(1 << 40):010x}"
        out[image] = (int(any(row)), *row)
        _write_slice(folder / f"{image}.dcm", image, patient, study, series, number, level, pixel_mm, fov, hu)
    return out


def _write_slice(path: Path, sop: str, patient: str, study: str, series: str, number: int, level: float,
                 pixel_mm: float, fov: float, hu: np.ndarray) -> None:  # fmt: skip
    """One CT image: signed HU stored with intercept 0 and slope 1 (value validation off: RSNA's "ID_..."
    image identifiers are not valid UIDs)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    with pydicom_config.disable_value_validation():
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, study, series
        ds.SeriesNumber, ds.InstanceNumber = 2, number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{-fov / 2:.4f}", f"{-fov / 2:.4f}", f"{level:.4f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceThickness, ds.PixelSpacing = f"{SLAB_MM:g}", [f"{pixel_mm:.6f}"] * 2
        ds.Rows = ds.Columns = hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = "0", "1", "40", "80"
        ds.PixelData = np.clip(np.rint(hu), -1024, 3071).astype(np.int16).tobytes()
        dcmwrite(path, ds, enforce_file_format=True)


def write_dataset(out: Path, n_train: int, n_test: int, image_size: int = 256, seed: int = 0, workers: int = 2) -> dict:
    """Write the RSNA-layout set under ``out`` (see the module docstring) and return its summary."""
    counts = {"train": n_train, "test": n_test}
    for split in counts:
        (out / f"stage_2_{split}").mkdir(parents=True, exist_ok=True)
    jobs = [(out / f"stage_2_{split}", split, i, seed, image_size) for split, n in counts.items() for i in range(n)]
    if workers == 1:
        results = [write_series(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(write_series, *zip(*jobs)))
    labels = {split: {} for split in counts}
    for job, result in zip(jobs, results):
        labels[job[1]].update(result)
    for name, split in (("stage_2_train.csv", "train"), ("stage_2_test_labels.csv", "test")):
        rows = [f"{image}_{label},{value}" for image, values in labels[split].items()
                for label, value in zip(LABELS, values)]
        (out / name).write_text("\n".join(["ID,Label", *rows]) + "\n")
    sample = [f"{image}_{label},0.5" for image in labels["test"] for label in LABELS]
    (out / "stage_2_sample_submission.csv").write_text("\n".join(["ID,Label", *sample]) + "\n")
    summary = {"generator": "scripts/other_phantom.py", "seed": seed, "image_size": image_size,
               "splits": {split: {"series": counts[split], "images": len(labels[split]),
                                  "positive_slices": dict(zip(LABELS, _positives(labels[split])))}
                          for split in counts}}  # fmt: skip
    (out / "synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _positives(labels: dict[str, tuple[int, ...]]) -> list[int]:
    """Positive slices per label."""
    return np.array(list(labels.values()), dtype=int).reshape(-1, len(LABELS)).sum(axis=0).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    summary = write_dataset(args.out, args.train, args.test, args.image_size, args.seed, args.workers)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
