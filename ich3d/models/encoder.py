"""2D CNN slice encoders built by name: a small CPU-sized net, MONAI networks with 2-D settings, timm backbones.

Every encoder maps (M, C, S, S) float images to (M, F) embeddings and has an ``out_features`` (F)
attribute. MONAI encoders are the MONAI modules themselves with their classifier replaced by
``nn.Identity``, so their state-dict keys stay MONAI's (the 2-D ResNets use torchvision's key names
and shapes by design: ``conv1``, ``bn1``, ``layerK.I.downsample.0``, bias-free shortcuts); their
local weights load from a file. ``timm/<model>`` names any timm backbone, with its pretrained weights
from a file, the Hugging Face cache or (asked for explicitly) the hub (:mod:`ich3d.models.timm_encoder`).
``monai`` and ``timm`` are imported inside the builders only (the imports take seconds).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ich3d.errors import ConfigError
from ich3d.models.timm_encoder import build_timm_encoder, check_timm_name, is_timm_name, timm_weights_file

logger = logging.getLogger(__name__)


class ConvBNAct(nn.Sequential):
    """3x3 convolution, batch norm, ReLU: (M, C_in, H, W) -> (M, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualConv(nn.Module):
    """x + ConvBNAct(x): a cheap residual refinement at constant width and resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class AvgMaxPool(nn.Module):
    """Global average and maximum pooling, concatenated: (M, C, H, W) -> (M, 2C, 1, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)], dim=1)


#: Global pooling of the small encoder.
POOLS = ("avg", "avgmax")


class SmallEncoder(nn.Module):
    """A CPU-sized CNN (about 0.7 M parameters with the default widths).

    A stride-2 3x3 stem, then one stage per width: a stride-2 ConvBNAct and a residual ConvBNAct;
    global pooling. Total stride 32 (4x4 features at 128 px).

    Args:
        in_channels: C of the (M, C, S, S) input.
        widths: channels of the stem (first entry) and of every stage.
        pool: ``avg``, global average pooling (F = ``widths[-1]``), or ``avgmax``, the average and the
            maximum concatenated (F = 2 ``widths[-1]``): a bleed in one cell of the last feature map
            is not diluted by the other cells.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...] | list[int] = (24, 24, 48, 96, 192),
                 pool: str = "avg") -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"widths needs a stem and at least one stage, got {widths}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        stages = [ConvBNAct(in_channels, widths[0], stride=2)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            stages += [ConvBNAct(c_in, c_out, stride=2), ResidualConv(c_out)]
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else AvgMaxPool()
        self.out_features = int(widths[-1]) * (1 if pool == "avg" else 2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, S, S) float -> (M, F) embeddings."""
        return self.pool(self.features(x)).flatten(1)


def _small(in_channels: int, **kwargs: Any) -> nn.Module:
    return SmallEncoder(in_channels, **kwargs)


def _resnet(arch: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """MONAI ResNet with the torchvision 2-D design: 7x7 stride-2 stem, max pool, bias-free shortcuts.

    MONAI's default ``conv1_t_stride=1`` (a 3-D video choice) costs about 3-4x more at the same size.
    """
    from monai.networks.nets import resnet

    builders = {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34, "resnet50": resnet.resnet50}
    settings = {"conv1_t_size": 7, "conv1_t_stride": 2, "bias_downsample": False, **kwargs}
    net = builders[arch](
        pretrained=False, spatial_dims=2, n_input_channels=in_channels, feed_forward=False, **settings
    )
    net.out_features = net.in_planes  # channels of the last stage = width of the pooled features
    return net


def _densenet121(in_channels: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, pretrained=False, **kwargs)
    net.out_features = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return net


def _seresnext50(in_channels: int, **kwargs: Any) -> nn.Module:
    """MONAI SEResNext50 (7x7 stride-2 stem, as the ImageNet model); no dropout: the heads have theirs."""
    from monai.networks.nets import SEResNext50

    settings = {"dropout_prob": None, **kwargs}
    net = SEResNext50(spatial_dims=2, in_channels=in_channels, pretrained=False, **settings)
    net.out_features = net.last_linear.in_features
    net.last_linear = nn.Identity()
    return net


def _efficientnet(model_name: str, in_channels: int, **kwargs: Any) -> nn.Module:
    """MONAI EfficientNetBN features (after the head conv and pooling; classifier and dropout removed)."""
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN(model_name, pretrained=False, spatial_dims=2, in_channels=in_channels, **kwargs)
    net.out_features = net._fc.in_features
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    return net


#: The encoder registry: name -> builder(in_channels, **kwargs) returning a module with ``out_features``.
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "small": _small,
    "resnet18": partial(_resnet, "resnet18"),
    "resnet34": partial(_resnet, "resnet34"),
    "resnet50": partial(_resnet, "resnet50"),
    "densenet121": _densenet121,
    "seresnext50": _seresnext50,
    "efficientnet-b0": partial(_efficientnet, "efficientnet-b0"),
}


def check_encoder_name(name: str) -> None:
    """Checks an encoder name: a key of :data:`ENCODERS` or ``timm/<model>`` of the installed timm.

    Raises:
        ConfigError: an unknown name (the message lists the known ones), timm missing.
    """
    if is_timm_name(name):
        check_timm_name(name)
    elif name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r} (model.encoder.name); known encoders: {', '.join(ENCODERS)} "
                          f"and timm/<model> (any timm backbone)")


def check_encoder_weights(encoder_cfg: Mapping[str, Any]) -> Path | None:
    """Finds the pretrained weights a ``model.encoder`` section asks for, before anything is trained.

    Returns:
        The local weights file (``weights``, or a timm backbone's file in the Hugging Face cache, or
        just downloaded with ``pretrained: hub``); None for random weights.

    Raises:
        ConfigError: a missing file, or timm weights that are not on this machine (one line saying
            which file to get and where to put it).
    """
    name, weights = encoder_cfg["name"], encoder_cfg.get("weights")
    if is_timm_name(name):
        return timm_weights_file(name, weights, encoder_cfg.get("pretrained", "none"))
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(f"encoder weights not found: {weights} (model.encoder.weights): give an existing file")
    return None if weights is None else Path(weights)


def build_encoder(
    name: str, in_channels: int, pretrained_weights: str | Path | None = None, pretrained_source: str = "none",
    **kwargs: Any
) -> nn.Module:
    """Build a slice encoder by name.

    Args:
        name: a key of :data:`ENCODERS`, or ``timm/<model>``.
        in_channels: C of the (M, C, S, S) input (3 for BSB, 9 for BSB 2.5D with one neighbour a side).
        pretrained_weights: optional local state-dict file (see :func:`load_encoder_weights`).
        pretrained_source: for timm backbones, where else weights may come from: ``none``, ``cache``, ``hub``
            (:func:`ich3d.models.timm_encoder.build_timm_encoder`).
        **kwargs: passed to the builder (e.g. ``widths`` for ``small``, ``conv1_t_stride`` for ResNets).

    Returns:
        A module mapping (M, C, S, S) float to (M, F) float, with ``out_features`` = F.

    Raises:
        ConfigError: unknown name, bad keyword arguments, ``pretrained`` asked for, unusable weights.
    """
    check_encoder_name(name)
    if is_timm_name(name):
        return build_timm_encoder(name, in_channels, pretrained_weights, pretrained_source, **kwargs)
    if pretrained_source != "none":
        raise ConfigError(f"model.encoder.pretrained {pretrained_source!r} is for timm/<model> encoders: for {name!r} "
                          f"save a state dict locally and set model.encoder.weights to its path")
    if "pretrained" in kwargs:
        raise ConfigError(
            "model.encoder.kwargs.pretrained is not supported: ich3d never downloads weights; "
            "save a state dict locally and set model.encoder.weights to its path"
        )
    try:
        encoder = ENCODERS[name](in_channels, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build encoder {name!r} with kwargs {kwargs}: {exc}") from exc
    if pretrained_weights is not None:
        load_encoder_weights(encoder, pretrained_weights)
    return encoder


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path``: a bare one, or under "state_dict"/"model" (e.g. a checkpoint).

    Prefixes are removed: "module." (DataParallel/DDP) and "encoder." (an ich3d model's state dict,
    whose other keys are then ignored).
    """
    if not path.is_file():
        raise ConfigError(f"encoder weights not found: {path} (model.encoder.weights): give an existing file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        raise ConfigError(f"cannot read encoder weights {path} with weights_only=True: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"{path} holds no state dict (a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in data.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight (O, I, k, k) to ``in_channels`` inputs (as timm does).

    One channel: sum over I. More: repeat the I input filters cyclically and scale by I / in_channels,
    so an input whose channels are all equal gives the same activations as before.
    """
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``encoder`` (``torch.load(weights_only=True)``).

    Classifier weights the encoder does not have (e.g. ``fc.*``) are ignored; a first convolution with
    another number of input channels (e.g. ImageNet RGB weights for 9-channel 2.5D input) is adapted
    with :func:`adapt_input_conv`. Everything else must match exactly.

    Raises:
        ConfigError: missing or unreadable file, missing parameters, or mismatched shapes.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = encoder.state_dict()
    first_conv = next(k for k, v in own.items() if v.ndim == 4)
    if first_conv in state and state[first_conv].shape[1] != own[first_conv].shape[1]:
        logger.info("adapting %s of %s from %d to %d input channels", first_conv, path,
                    state[first_conv].shape[1], own[first_conv].shape[1])
        state[first_conv] = adapt_input_conv(state[first_conv], own[first_conv].shape[1])
    missing = [k for k in own if k not in state]
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    if missing or mismatched:
        raise ConfigError(
            f"encoder weights {path} do not fit the encoder: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(mismatched)} of another shape (e.g. {mismatched[:3]}): check model.encoder.name/kwargs"
        )
    ignored = sorted(set(state) - set(own))
    if ignored:
        logger.info("ignored %d entries of %s not in the encoder: %s", len(ignored), path, ignored[:5])
    encoder.load_state_dict({k: state[k] for k in own})
