"""The series model: a 2D slice encoder folded over (B * N) slices, then a head over each series."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ich3d.errors import ConfigError
from ich3d.models.encoder import build_encoder
from ich3d.models.heads import build_head


class IchModel(nn.Module):
    """Encoder + head. Device-agnostic; works with ``channels_last`` and ``torch.autocast``.

    Args:
        encoder: maps (M, C, S, S) to (M, F); has ``out_features`` = F.
        head: maps embeddings (B, N, F), mask (B, N), readable (B, N) to logits (B, N, 6).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.out_features = int(encoder.out_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embed slices: (M, C, S, S) float in [0, 1] -> (M, F); M may be 0."""
        if x.shape[0] == 0:
            return x.new_zeros((0, self.out_features))
        return self.encoder(x)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-slice logits of padded series.

        Only real, readable slices go through the encoder (folded into one (M, C, S, S) batch, MONAI
        MILModel style); the head gets zeros at padding and its missing embedding at unreadable slices.

        Args:
            x: (B, N, C, S, S) float images; padding and unreadable slices may hold anything.
            mask: (B, N) bool, True = real slice (padding is a suffix of each row).
            readable: (B, N) bool, False = real slice whose pixels could not be read; None = all readable.

        Returns:
            (B, N, 6) logits.
        """
        if x.shape[:2] != mask.shape:
            raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} disagree on (B, N)")
        keep = mask if readable is None else mask & readable
        features = self.encode(x[keep])
        embeddings = features.new_zeros((*mask.shape, self.out_features))
        embeddings[keep] = features
        return self.head(embeddings, mask, readable)

    def forward_embeddings(
        self, embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-slice logits from cached embeddings (B, N, F); mask/readable as in :meth:`forward`."""
        return self.head(embeddings, mask, readable)


def build_model(model_cfg: Mapping[str, Any], in_channels: int, load_weights: bool = True) -> IchModel:
    """Build the model from the config's plain-dict ``model`` section.

    Args:
        model_cfg: ``{"encoder": {"name": str, "weights": str | None, "kwargs": dict},
            "head": {"name": "gru" | "slice", "hidden": int, "num_layers": int, "dropout": float}}``.
        in_channels: C of the encoder input.
        load_weights: load ``encoder.weights`` when set; pass False when a checkpoint's state dict
            is loaded next (inference needs no access to the original pretrained file).

    Raises:
        ConfigError: missing sections, unknown encoder/head or settings, unusable weights file.
    """
    for section in ("encoder", "head"):
        if not isinstance(model_cfg.get(section), Mapping):
            raise ConfigError(f"config key 'model.{section}' is missing or not a mapping")
    encoder_cfg = dict(model_cfg["encoder"])
    unknown = sorted(set(encoder_cfg) - {"name", "weights", "kwargs"})
    if unknown or "name" not in encoder_cfg:
        raise ConfigError(
            f"config key 'model.encoder' needs 'name' and allows 'weights', 'kwargs'; got {sorted(encoder_cfg)}"
        )
    weights = encoder_cfg.get("weights") if load_weights else None
    encoder = build_encoder(encoder_cfg["name"], in_channels, weights, **(encoder_cfg.get("kwargs") or {}))
    return IchModel(encoder, build_head(model_cfg["head"], encoder.out_features))
