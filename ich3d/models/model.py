"""The series model: a 2D slice encoder folded over (B * N) slices, then a head over each series."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ich3d.constants import LABELS
from ich3d.errors import ConfigError
from ich3d.models.encoder import build_encoder, check_encoder_name
from ich3d.models.heads import HEADS, build_head


class LogitProjection(nn.Module):
    """The slice stage's classifier as a feature map: (M, F) embeddings → (M, 6) label logits with the
    sampling correction of :class:`ich3d.models.heads.SliceHead` (its ``out`` and ``logit_offset``)."""

    logit_offset: torch.Tensor

    def __init__(self, in_features: int, n_labels: int) -> None:
        super().__init__()
        self.out = nn.Linear(in_features, n_labels)
        self.register_buffer("logit_offset", torch.zeros(n_labels))
        self.out_features = n_labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) - self.logit_offset.to(x.dtype)


class IchModel(nn.Module):
    """Encoder (+ projection) + head. Device-agnostic; works with ``channels_last`` and ``torch.autocast``.

    Args:
        encoder: maps (M, C, S, S) to (M, F); has ``out_features`` = F.
        head: maps features (B, N, F'), mask (B, N), readable (B, N) to logits (B, N, 6).
        projection: optional map of the encoder's (M, F) to the head's (M, F') features
            (:class:`LogitProjection` for ``model.features: logits``); None: F' = F.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.projection = projection
        self.out_features = int(projection.out_features if projection is not None else encoder.out_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice features: (M, C, S, S) float in [0, 1] -> (M, F'); M may be 0."""
        if x.shape[0] == 0:
            return x.new_zeros((0, self.out_features))
        features = self.encoder(x)
        return features if self.projection is None else self.projection(features)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None) -> torch.Tensor:
        """Per-slice logits of padded series, end to end.

        The images come folded (MONAI MILModel style): only real, readable slices, one
        (M, C, S, S) batch, so padding and unreadable slices cost no encoder work. The head gets zeros
        at padding and its missing-slice embedding at unreadable slices. A batch of single slices is
        the case N = 1.

        Args:
            x: (M, C, S, S) float images in [0, 1] of the positions where ``mask & readable``, in
                row-major (B, N) order.
            mask: (B, N) bool, True = real slice (padding is a suffix of each row).
            readable: (B, N) bool, False = real slice whose pixels could not be read (or are hidden
                in training); None = all real slices readable.

        Returns:
            (B, N, 6) logits.
        """
        keep = mask if readable is None else mask & readable
        if x.shape[0] != int(keep.sum()):
            raise ValueError(f"x holds {x.shape[0]} images, mask & readable select {int(keep.sum())}")
        features = self.encode(x)
        embeddings = features.new_zeros((*mask.shape, self.out_features))
        embeddings[keep] = features
        return self.head(embeddings, mask, readable)


def build_model(model_cfg: Mapping[str, Any], in_channels: int, load_weights: bool = True) -> IchModel:
    """Build the model from the config's plain-dict ``model`` section.

    Args:
        model_cfg: ``{"encoder": {"name": str, "weights": str | None, "pretrained": str, "kwargs": dict},
            "head": {"name": "gru" | "slice", "hidden": int, "num_layers": int, "dropout": float}}``.
        in_channels: C of the encoder input.
        load_weights: load ``encoder.weights`` (or, for timm, ``encoder.pretrained``) when set; pass
            False when a checkpoint's state dict is loaded next (inference needs no access to the
            original pretrained file).

    Raises:
        ConfigError: missing sections, unknown encoder/head or settings, unusable weights file.
    """
    check_model_config(model_cfg)
    encoder_cfg = model_cfg["encoder"]
    weights = encoder_cfg.get("weights") if load_weights else None
    pretrained = encoder_cfg.get("pretrained", "none") if load_weights else "none"
    encoder = build_encoder(encoder_cfg["name"], in_channels, weights, pretrained, **(encoder_cfg.get("kwargs") or {}))
    logits = model_cfg.get("features", "embedding") == "logits" and model_cfg["head"]["name"] != "slice"
    projection = LogitProjection(encoder.out_features, len(LABELS)) if logits else None
    features = projection.out_features if projection is not None else encoder.out_features
    head_cfg = dict(model_cfg["head"]) | ({"residual": True} if logits else {})
    return IchModel(encoder, build_head(head_cfg, features), projection)


def check_model_config(model_cfg: Mapping[str, Any]) -> None:
    """Checks the ``model`` section without building anything: both sections there, known names.

    Raises:
        ConfigError: a missing section, unknown keys, an unknown encoder or head name.
    """
    for section in ("encoder", "head"):
        if not isinstance(model_cfg.get(section), Mapping):
            raise ConfigError(f"config key 'model.{section}' is missing or not a mapping")
    encoder_cfg = dict(model_cfg["encoder"])
    unknown = sorted(set(encoder_cfg) - {"name", "weights", "pretrained", "kwargs"})
    if unknown or "name" not in encoder_cfg:
        raise ConfigError(f"config key 'model.encoder' needs 'name' and allows 'weights', 'pretrained', 'kwargs'; "
                          f"got {sorted(encoder_cfg)}")
    check_encoder_name(encoder_cfg["name"])
    if model_cfg["head"].get("name") not in HEADS:
        raise ConfigError(f"unknown head {model_cfg['head'].get('name')!r} (model.head.name); "
                          f"known heads: {', '.join(HEADS)}")
