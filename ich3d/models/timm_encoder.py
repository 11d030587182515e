"""timm backbones as slice encoders (``model.encoder.name: timm/<model>``), with their pretrained weights.

The backbone is ``timm.create_model(<model>, num_classes=0, in_chans=C)``: no classifier, any input
channel count (timm adapts a pretrained first convolution to C channels: the RGB filters repeated
cyclically and scaled by 3 / C, so channel i of a 2.5D stack, which holds window i mod 3, gets the
filter of colour i mod 3), and the feature width F read from the model (``num_features``).

Pretrained weights come, in this order, from (docs/design.md §4):

1. a local file, ``model.encoder.weights`` (a state dict: ``.pt``/``.pth``/``.bin`` or ``.safetensors``);
2. the local Hugging Face cache (``model.encoder.pretrained: cache``, or ``hub`` when the file is there);
3. the hub, only with ``model.encoder.pretrained: hub`` and only when ``HF_HUB_OFFLINE`` is not set.

Nothing is fetched silently: ``pretrained: none`` (the default) starts from random weights, and a
missing file or a cache miss is one line naming the file to get and where to put it. The window
channels are normalised as the weights expect (the pretrained config's per-colour mean and std,
repeated over the 2.5D slices) inside the encoder, so the normalisation is part of the model: it is
stored in every checkpoint (``encoder.input_mean``, ``encoder.input_std``) and in exported graphs.
``timm`` and ``huggingface_hub`` are imported only when such an encoder is built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ich3d.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "timm/"
PRETRAINED_SOURCES = ("none", "cache", "hub")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


class TimmEncoder(nn.Module):
    """A timm backbone behind the normalisation its weights expect.

    Args:
        backbone: a timm model built with ``num_classes=0`` (its forward returns pooled (M, F) features).
        mean, std: (C,) per-input-channel normalisation.

    Attributes:
        out_features: F.
        model_name: the timm model name (without the ``timm/`` prefix).
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor, model_name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("input_mean", mean.float().reshape(-1))
        self.register_buffer("input_std", std.float().reshape(-1))
        self.out_features = int(backbone.num_features)
        self.model_name = model_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, S, S) float windows in [0, 1] -> (M, F) features."""
        mean = self.input_mean.to(x.dtype)[None, :, None, None]
        std = self.input_std.to(x.dtype)[None, :, None, None]
        return self.backbone((x - mean) / std)

    def feature_modules(self) -> list[tuple[nn.Module, int]]:
        """The backbone's stages as timm describes them (``feature_info``), shallow to deep: (module,
        channels). Grad-CAM hooks them (:meth:`feature_map` turns their outputs into maps).

        A transformer pooled by its class token reads only that token after the last block, so the
        last block's patch tokens get no gradient: its stages end one block earlier (the input of the
        last block, as Grad-CAM for ViTs does).
        """
        modules = dict(self.backbone.named_modules())
        info = getattr(self.backbone, "feature_info", None) or []
        stages = [(modules[entry["module"]], int(entry["num_chs"])) for entry in info if entry.get("module") in modules]
        return stages[:-1] if getattr(self.backbone, "global_pool", None) == "token" else stages

    def feature_map(self, output: Any, channels: int) -> tuple[torch.Tensor | None, Any]:
        """A stage's output as an (M, K, h, w) map, and the output rebuilt from that map.

        CNN stages give NCHW maps (returned as they are); channels-last stages (Swin-like) NHWC;
        transformer blocks (M, T, K) tokens, prefix tokens (class, registers) first. The rebuilt
        output is what the stage returns in a forward hook, so gradients reach the map.

        Returns:
            (map or None when the output is no spatial map, the output to pass on).
        """
        if not isinstance(output, torch.Tensor):
            return None, output
        if output.ndim == 4 and output.shape[1] == channels:
            return output, output
        if output.ndim == 4 and output.shape[-1] == channels:
            fmap = output.permute(0, 3, 1, 2)
            return fmap, fmap.permute(0, 2, 3, 1)
        prefix = int(getattr(self.backbone, "num_prefix_tokens", 0))
        side = int(round((output.shape[1] - prefix) ** 0.5)) if output.ndim == 3 else 0
        if output.ndim != 3 or side * side != output.shape[1] - prefix or output.shape[-1] != channels:
            return None, output
        fmap = output[:, prefix:].reshape(len(output), side, side, channels).permute(0, 3, 1, 2)
        return fmap, torch.cat([output[:, :prefix], fmap.permute(0, 2, 3, 1).reshape(len(output), -1, channels)], 1)


def is_timm_name(name: str) -> bool:
    """Whether ``name`` asks for a timm backbone (``timm/<model>``)."""
    return name.startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError("model.encoder.name timm/...: timm is not installed: pip install 'ich3d[timm]'") from None
    return timm


def check_timm_name(name: str) -> None:
    """Checks that ``timm/<model>`` names a model of the installed timm.

    Raises:
        ConfigError: timm missing, or an unknown model.
    """
    timm = _timm()
    model = name.removeprefix(PREFIX)
    if not model or not timm.is_model(model):
        raise ConfigError(f"unknown timm model {model!r} (model.encoder.name {name}): see timm.list_models() "
                          f"for the names of timm {timm.__version__}")


def build_timm_encoder(name: str, in_channels: int, weights: str | Path | None = None,
                       pretrained: str = "none", **kwargs: Any) -> TimmEncoder:
    """Builds ``timm/<model>`` as an encoder, with pretrained weights when asked (module docstring).

    Args:
        name: ``timm/<model>``, e.g. ``timm/resnet18``, ``timm/tf_efficientnet_b0``.
        in_channels: C of the (M, C, S, S) input.
        weights: a local weights file (first choice); None: ``pretrained`` decides.
        pretrained: ``none`` (random weights), ``cache`` (the Hugging Face cache only) or ``hub``
            (the cache, else a download unless ``HF_HUB_OFFLINE`` is set).
        **kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``img_size``).

    Returns:
        The encoder: (M, C, S, S) float in [0, 1] -> (M, F).

    Raises:
        ConfigError: timm missing, unknown model or settings, a weights file missing or unusable, or
            weights asked for that are not on this machine.
    """
    timm = _timm()
    model = name.removeprefix(PREFIX)
    forbidden = sorted({"pretrained", "num_classes", "in_chans", "pretrained_cfg_overlay"} & set(kwargs))
    if forbidden:
        raise ConfigError(f"model.encoder.kwargs {forbidden}: set by ich3d (weights: model.encoder.weights / "
                          f"model.encoder.pretrained; channels: data.input)")
    source = timm_weights_file(name, weights, pretrained)
    overlay = {"file": str(source)} if source is not None else None
    try:
        backbone = timm.create_model(model, pretrained=source is not None, pretrained_cfg_overlay=overlay,
                                     num_classes=0, in_chans=in_channels, **kwargs)
    except (RuntimeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"weights {source} do not fit timm model {model} ({first}): give the weights of "
                          f"{model} (model.encoder.weights)") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"cannot build encoder {name!r} with kwargs {kwargs}: {exc}") from exc
    if source is not None:
        log.info("%s: pretrained weights from %s", name, source)
    mean, std = _normalisation(backbone.pretrained_cfg, in_channels)
    return TimmEncoder(backbone, mean, std, model)


def _normalisation(cfg: Any, in_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) mean and std: the pretrained config's per-colour values, cycled over the input channels."""
    mean = torch.tensor(cfg.get("mean") or (0.0, 0.0, 0.0), dtype=torch.float32)
    std = torch.tensor(cfg.get("std") or (1.0, 1.0, 1.0), dtype=torch.float32)
    index = torch.arange(in_channels) % len(mean)
    return mean[index], std[index]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def timm_weights_file(name: str, weights: str | Path | None, pretrained: str) -> Path | None:
    """Where the pretrained weights of ``timm/<model>`` are on this machine (module docstring), or None
    for random weights.

    Raises:
        ConfigError: a weights file that does not exist, or weights asked for that are not here (and
            may not be downloaded): one line saying which file to get and where to put it.
    """
    check_timm_name(name)
    model = name.removeprefix(PREFIX)
    cfg = _timm().models.get_pretrained_cfg(model)
    repo = cfg.hf_hub_id if cfg is not None else None
    where = f"https://huggingface.co/{repo}" if repo else f"the {model} entry of timm's pretrained configs"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"encoder weights not found: {path} (model.encoder.weights): download "
                              f"{_HUB_FILES[0]} from {where} and save it as {path}")
        return path
    if pretrained not in PRETRAINED_SOURCES:
        raise ConfigError(f"model.encoder.pretrained {pretrained!r}: must be one of {', '.join(PRETRAINED_SOURCES)}")
    if pretrained == "none":
        return None
    if not repo:
        raise ConfigError(f"timm model {model} has no Hugging Face weights: save a state dict of it and set "
                          f"model.encoder.weights to its path")
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in _HUB_FILES:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    if pretrained == "hub" and not _offline():
        from huggingface_hub import hf_hub_download

        log.warning("downloading %s/%s from the Hugging Face hub (model.encoder.pretrained: hub)", repo, _HUB_FILES[0])
        return Path(hf_hub_download(repo, _HUB_FILES[0]))
    why = "HF_HUB_OFFLINE is set" if pretrained == "hub" else "model.encoder.pretrained is cache"
    raise ConfigError(f"pretrained weights of timm/{model} are not in the Hugging Face cache {constants.HF_HUB_CACHE} "
                      f"and {why}: download {_HUB_FILES[0]} from {where} and set model.encoder.weights to its path "
                      f"(or `hf download {repo}` into that cache)")
