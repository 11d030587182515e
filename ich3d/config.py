"""Typed training/inference configuration, loaded from YAML with strict validation.

A config is a tree of frozen dataclasses. YAML files hold only plain values; unknown or duplicate
keys, wrong types and out-of-range values are :class:`~ich3d.errors.ConfigError` naming the dotted
key. The resolved config of a run is written back as ``RUN/config.yaml`` and stored (as a plain dict) in checkpoints.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from ich3d.atomic import write_text_atomic
from ich3d.augment_config import ACQUISITION, AugmentConfig  # noqa: F401  (part of the config tree)
from ich3d.constants import MAX_IMAGE_SIZE
from ich3d.errors import ConfigError
from ich3d.yaml_unique import DuplicateKeyError, safe_load_unique

INPUT_MODES = ("bsb", "bsb25d")
HEADS = ("gru", "slice")
FEATURES = ("embedding", "logits")
PRETRAINED = ("none", "cache", "hub")
STAGE_ORDER = ("slice", "sequence", "finetune")


@dataclass(frozen=True)
class DataConfig:
    """How slices become network input.

    Attributes:
        image_size: side S of the (S, S) network input in pixels; the HU cache is resized on the fly
            when its size differs.
        input: ``bsb`` (brain/subdural/soft-tissue windows, 3 channels) or ``bsb25d`` (BSB of the
            slice and ``context`` neighbours on each side, 3 * (2 * context + 1) channels).
        context: neighbours on each side for ``bsb25d``.
        crop: the ``build-series --crop`` of the cache the model reads: ``head`` (each series cropped
            to a square around the head before resizing) or ``none`` (the whole image); training
            checks that the dataset's is the same, inference builds with it.
    """

    image_size: int = 128
    input: str = "bsb"
    context: int = 1
    crop: str = "head"

    def __post_init__(self) -> None:
        _check(16 <= self.image_size <= MAX_IMAGE_SIZE, "data.image_size", f"must be 16 to {MAX_IMAGE_SIZE} pixels")
        _check(self.input in INPUT_MODES, "data.input", f"must be one of {INPUT_MODES}")
        _check(self.context >= 1, "data.context", "must be >= 1")
        _check(self.crop in ("head", "none"), "data.crop", "must be head or none")

    @property
    def slices_per_sample(self) -> int:
        """Number of neighbouring slices read per input image (1 for ``bsb``)."""
        return 2 * self.context + 1 if self.input == "bsb25d" else 1

    @property
    def in_channels(self) -> int:
        """Channels C of the encoder input."""
        return 3 * self.slices_per_sample


@dataclass(frozen=True)
class EncoderConfig:
    """2D CNN encoder, built by name from :data:`ich3d.models.encoder.ENCODERS` or ``timm/<model>``.

    Attributes:
        name: a registry name (``small``, ``resnet18``...) or ``timm/<model>``.
        weights: a local weights file (state dict or safetensors), the first choice.
        pretrained: for timm backbones without ``weights``: ``none`` (random weights), ``cache`` (the
            local Hugging Face cache) or ``hub`` (the cache, else a download unless HF_HUB_OFFLINE).
        kwargs: passed to the builder.
    """

    name: str = "small"
    weights: Union[str, None] = None
    pretrained: str = "none"
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.pretrained in PRETRAINED, "model.encoder.pretrained", f"must be one of {PRETRAINED}")


@dataclass(frozen=True)
class HeadConfig:
    """Sequence head over a series' slice embeddings."""

    name: str = "gru"
    hidden: int = 128
    num_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _check(self.name in HEADS, "model.head.name", f"must be one of {HEADS}")
        _check(self.hidden >= 1 and self.num_layers >= 1, "model.head", "hidden, num_layers >= 1")
        _check(0 <= self.dropout < 1, "model.head.dropout", "must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """The series model.

    Attributes:
        features: what the sequence head reads per slice: ``embedding`` (the encoder's F features)
            or ``logits`` (the slice stage's six label logits: a space every fold's encoder shares, so
            out-of-fold features from several encoders can be stacked; docs/design.md §4).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    features: str = "embedding"

    def __post_init__(self) -> None:
        _check(self.features in FEATURES, "model.features", f"must be one of {FEATURES}")


@dataclass(frozen=True)
class StageConfig:
    """What every training stage has (each stage adds its own keys in a subclass).

    Attributes:
        epochs: passes; for ``slice`` an epoch is ``samples_per_epoch`` sampled slices, for
            ``sequence``/``finetune`` one pass over the training series.
        batch_size: slices (``slice``) or series (``sequence``, ``finetune``) per step.
        lr, weight_decay: AdamW settings; the learning rate follows a cosine schedule after a linear
            warmup over ``warmup_fraction`` of the steps.
        label_smoothing: e: targets move toward 1/2, y(1 - e) + e/2, so the loss is smallest at a finite
            logit and the stage stops pushing its outputs toward 0 and 1 (confident false positives
            are what a model loses most log loss with on an unfamiliar scanner). 0 = the plain targets.
    """

    STAGE: ClassVar[str] = "*"

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        key = f"stages.{self.STAGE}"
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{key}.lr", "must be > 0")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(0 <= self.warmup_fraction < 1, f"{key}.warmup_fraction", "must be in [0, 1)")
        _check(0 <= self.label_smoothing < 0.5, f"{key}.label_smoothing", "must be in [0, 0.5)")


@dataclass(frozen=True)
class SliceStageConfig(StageConfig):
    """Stage 1, encoder + per-slice head on sampled single slices.

    Attributes:
        positive_fraction: share of each epoch drawn from slices with ``any`` = 1.
        samples_per_epoch: slices per epoch (0 = every readable labeled training slice once).
    """

    STAGE: ClassVar[str] = "slice"

    positive_fraction: float = 0.3
    samples_per_epoch: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.positive_fraction <= 1, "stages.slice.positive_fraction", "must be in [0, 1]")
        _check(self.samples_per_epoch >= 0, "stages.slice.samples_per_epoch", "must be >= 0")


@dataclass(frozen=True)
class SeriesStageConfig(StageConfig):
    """Keys of the stages that train on whole series (sequence, finetune).

    Attributes:
        crop_len: series longer than this are randomly cropped to it in training (0 = no crop).
        drop_slices: share of readable slices hidden from the model in training (replaced by the
            missing-slice embedding), so it learns to predict unreadable slices from their neighbours.
    """

    crop_len: int = 0
    drop_slices: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.crop_len >= 0, f"stages.{self.STAGE}.crop_len", "must be >= 0")
        _check(0 <= self.drop_slices < 1, f"stages.{self.STAGE}.drop_slices", "must be in [0, 1)")


@dataclass(frozen=True)
class SequenceStageConfig(SeriesStageConfig):
    """Stage 2, the sequence head on cached slice embeddings (the encoder is frozen).

    Attributes:
        augmented_views: training views embedded under the ``augment`` settings besides the plain and
            flipped ones, each one fixed draw per series (docs/design.md §4); out of fold, every
            fold's validation series get them too (they are the other folds' training features).
    """

    STAGE: ClassVar[str] = "sequence"

    augmented_views: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 <= self.augmented_views <= 8, "stages.sequence.augmented_views", "must be 0 to 8")


@dataclass(frozen=True)
class FinetuneStageConfig(SeriesStageConfig):
    """Stage 3, encoder and head end to end over augmented series crops."""

    STAGE: ClassVar[str] = "finetune"


@dataclass(frozen=True)
class StagesConfig:
    """The stages to run; a stage runs when its section is present. They run in the fixed order
    slice, sequence, finetune; ``slice`` trains the encoder and is required."""

    slice: Union[SliceStageConfig, None] = None
    sequence: Union[SequenceStageConfig, None] = None
    finetune: Union[FinetuneStageConfig, None] = None

    def __post_init__(self) -> None:
        _check(self.slice is not None, "stages.slice", "the slice stage trains the encoder: it is required")

    def names(self) -> list[str]:
        """The stages to run, in their fixed order."""
        return [name for name in STAGE_ORDER if getattr(self, name) is not None]


@dataclass(frozen=True)
class InferConfig:
    """Test-time augmentation at inference: a property of the model (its checkpoint carries it); the
    machine's settings (batch size, workers, mixed precision) are options of ``ich3d infer``."""

    tta_flip: bool = True
    tta_reverse: bool = True


@dataclass(frozen=True)
class Config:
    """The whole training configuration (see ``configs/*.yaml``).

    Attributes:
        folds: cross-validation folds (grouped by patient).
        train_folds: what ``ich3d train`` trains without ``--fold``/``--folds``: one fold (its number)
            or ``all`` (every fold, the sequence stage out of fold; docs/design.md §4).
    """

    seed: int = 0
    folds: int = 5
    train_folds: str = "0"
    num_workers: int = 1
    amp: bool = True
    channels_last: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: StagesConfig = field(default_factory=lambda: StagesConfig(slice=SliceStageConfig()))
    infer: InferConfig = field(default_factory=InferConfig)

    def __post_init__(self) -> None:
        _check(self.folds >= 2, "folds", "must be >= 2")
        _check(self.train_folds == "all" or (self.train_folds.isdigit() and int(self.train_folds) < self.folds),
               "train_folds", f"the folds `ich3d train` trains without --fold/--folds: all, or one of 0..{self.folds - 1}")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/checkpoint friendly) of the resolved config; absent stages left out."""
        data = dataclasses.asdict(self)
        data["stages"] = {name: value for name, value in data["stages"].items() if value is not None}
        return data


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: accept such numeric strings as numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Checks and converts one YAML value to the annotated type ``hint``."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _convert(value, options[0], key)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        args = typing.get_args(hint)
        if not args:
            return dict(value)
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if hint in (int, float):
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if hint is int and float(value) != int(value):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return hint(value)
    if hint is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. train_folds: 0
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {key}")  # programming error


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Builds dataclass ``cls`` from a mapping, rejecting unknown keys (named with their path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix or '<root>'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + str(k) for k in unknown)}; "
            f"known keys{' under ' + prefix if prefix else ''}: {', '.join(sorted(names))}"
        )
    kwargs = {k: _convert(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``--set a.b=value`` overrides (values parsed as YAML) to a plain config dict."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a mapping")
            node = child
        node[path[-1]] = value
    return data


def packaged_configs() -> list[str]:
    """Names of the configs shipped with ich3d (``cpu_small``, ``rsna_256``, ...)."""
    return sorted(entry.name.removesuffix(".yaml") for entry in (resources.files("ich3d") / "configs").iterdir()
                  if entry.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the bare name of a packaged config (``cpu_small`` → ``configs/cpu_small.yaml``).

    A path with a folder in it (``/elsewhere/cpu_small.yaml``) is only ever that file: a missing file
    is an error, never silently replaced by the packaged config of the same name.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    bare = path.parent == Path(".") and path.suffix in ("", ".yaml")
    packaged = resources.files("ich3d") / "configs" / f"{path.stem}.yaml"
    if bare and packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"config file not found: {name_or_path} (give a YAML path, or the name of a packaged config: "
                      f"{', '.join(packaged_configs())})")


def load_config(source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Loads, overrides and validates a config.

    Args:
        source: a YAML path, a packaged config name, a plain dict, or None for the defaults.
        overrides: ``key.sub=value`` strings applied on top.

    Raises:
        ConfigError: unreadable YAML, unknown keys, or invalid values (the message names the key).
    """
    if isinstance(source, dict):
        data = dict(source)
    elif source is None:
        data = {}
    else:
        path = resolve_config_path(source)
        try:
            data = safe_load_unique(path.read_text(encoding="utf-8")) or {}
        except DuplicateKeyError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not a valid YAML text file: {' '.join(str(exc).split())}") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} holds a {type(data).__name__}, not a mapping of config keys")
    return _from_dict(Config, apply_overrides(data, overrides or []))


def save_config(config: Config, path: Path) -> None:
    """Writes the resolved config as YAML."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
