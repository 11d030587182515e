"""Heads over a series' slice embeddings: a per-slice linear baseline and a bidirectional GRU.

Both map embeddings (B, N, F) and a padding mask (B, N) to per-slice logits (B, N, 6). Real slices
whose pixels could not be read (``readable`` False) get a learned ``missing_embedding`` instead of
their (meaningless) embedding, so the GRU predicts them from their neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ich3d.constants import LABELS
from ich3d.errors import ConfigError


def fill_embeddings(
    embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None, missing: torch.Tensor
) -> torch.Tensor:
    """Replace padding by zeros and real-but-unreadable slices by ``missing``.

    Args:
        embeddings: (B, N, F) float; values at padding and unreadable positions are ignored (may be NaN).
        mask: (B, N) bool, True = real slice.
        readable: (B, N) bool, True = pixels read; None = all real slices readable.
        missing: (F,) the missing-slice embedding.

    Returns:
        (B, N, F) embeddings.

    Raises:
        ValueError: ``mask`` or ``readable`` is not bool.
    """
    if mask.dtype != torch.bool or (readable is not None and readable.dtype != torch.bool):
        raise ValueError(f"mask and readable must be bool tensors, got {mask.dtype}")
    result = torch.where(mask.unsqueeze(-1), embeddings, torch.zeros((), dtype=embeddings.dtype,
                                                                    device=embeddings.device))
    # Always in the graph (zero gradient when every slice is readable), as DistributedDataParallel wants.
    unreadable = mask & ~readable if readable is not None else torch.zeros_like(mask)
    return torch.where(unreadable.unsqueeze(-1), missing.to(result.dtype), result)


def sequence_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 CPU lengths of a (B, N) bool mask whose padding (False) is a suffix of each row.

    Raises:
        ValueError: the mask is not bool or has a False before a True in some row.
    """
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"mask must be (B, N) bool, got {tuple(mask.shape)} {mask.dtype}")
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(positions[None, :] < lengths[:, None], mask):
        raise ValueError("mask padding must be a suffix of each series (True, ..., True, False, ..., False)")
    return lengths.cpu()


class SliceHead(nn.Module):
    """Per-slice linear classifier (the slice-only baseline: no context across slices).

    The slice stage oversamples positive slices, so in training the head learns the odds of the
    sampled epochs; ``logit_offset`` (6,), the log-odds of the sampled minus the natural label rates
    (set by the stage, stored with the weights), is subtracted outside training, so its probabilities
    are those of natural series (prior-shift correction).

    Args:
        in_features: F.
        dropout: dropout on the embeddings.
    """

    logit_offset: torch.Tensor

    def __init__(self, in_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.missing_embedding = nn.Parameter(torch.zeros(in_features))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_features, len(LABELS))
        self.register_buffer("logit_offset", torch.zeros(len(LABELS)))

    def forward(
        self, embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, F) embeddings, (B, N) bool mask and readable -> (B, N, 6) logits."""
        x = fill_embeddings(embeddings, mask, readable, self.missing_embedding)
        logits = self.out(self.dropout(x))
        return logits if self.training else logits - self.logit_offset.to(logits.dtype)

    def whole_series(self, embeddings: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        """(B, N, F) embeddings of B whole series of N slices (no padding), (B, N) bool readable ->
        (B, N, 6) logits: :meth:`forward` with every slice real (an exportable graph)."""
        return self(embeddings, torch.ones_like(readable), readable)


class GRUHead(nn.Module):
    """Bidirectional GRU over each series, with a skip from the slice embedding to the classifier.

    logits = Linear(Dropout(concat(BiGRU(LN(e)), LN(e)))), the GRU run on packed sequences so that
    padding never influences a real slice. On the slice stage's label logits (``residual``) the head
    learns a correction: logits = e + Linear(Dropout(concat(BiGRU(e), e))) with the Linear starting at
    zero, so an untrained head is the slice model and a few hundred steps on 30 series cannot make it
    worse than that (no LayerNorm there: normalising six logits per slice would erase how likely the
    slice is as a whole).

    Args:
        in_features: F.
        hidden: GRU hidden size per direction.
        num_layers: stacked GRU layers.
        dropout: between GRU layers and before the classifier.
        input_norm: LayerNorm on the embeddings (helps with unnormalised cached CNN features).
        skip: concatenate the embedding with the GRU output before the classifier.
        residual: the embeddings are the six label logits; add them to the output (implies no input norm).
    """

    def __init__(self, in_features: int, hidden: int = 128, num_layers: int = 2, dropout: float = 0.1,
                 input_norm: bool = True, skip: bool = True, residual: bool = False) -> None:
        super().__init__()
        if residual and in_features != len(LABELS):
            raise ConfigError(f"a residual sequence head needs the {len(LABELS)} label logits as features, "
                              f"got {in_features}")
        input_norm = input_norm and not residual
        self.residual = residual
        self.missing_embedding = nn.Parameter(torch.zeros(in_features))
        self.norm = nn.LayerNorm(in_features) if input_norm else nn.Identity()
        self.gru = nn.GRU(in_features, hidden, num_layers, batch_first=True, bidirectional=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.skip = skip
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden + (in_features if skip else 0), len(LABELS))
        if residual:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(
        self, embeddings: torch.Tensor, mask: torch.Tensor, readable: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-slice logits.

        Args:
            embeddings: (B, N, F) float slice embeddings.
            mask: (B, N) bool, True = real slice; padding (False) is a suffix of each row.
            readable: (B, N) bool, False = real slice whose pixels failed (gets the missing embedding).

        Returns:
            (B, N, 6) logits; rows at padding are finite but meaningless.
        """
        lengths = sequence_lengths(mask).clamp_min(1)  # an all-padding row runs on one dummy step
        filled = fill_embeddings(embeddings, mask, readable, self.missing_embedding)
        x = self.norm(filled)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self._classify(out, x, filled)

    def whole_series(self, embeddings: torch.Tensor, readable: torch.Tensor) -> torch.Tensor:
        """Per-slice logits of B whole series of N slices each (no padding, so no packing): equal to
        :meth:`forward` with an all-True mask, as one graph that ``torch.onnx.export`` maps to ONNX's GRU.

        Args:
            embeddings: (B, N, F) float slice embeddings.
            readable: (B, N) bool, False = a slice whose pixels failed.

        Returns:
            (B, N, 6) logits.
        """
        filled = fill_embeddings(embeddings, torch.ones_like(readable), readable, self.missing_embedding)
        x = self.norm(filled)
        out, _ = self.gru(x)
        return self._classify(out, x, filled)

    def _classify(self, out: torch.Tensor, x: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """(B, N, 6) logits from the GRU output, its (normalised) input and the filled embeddings."""
        features = torch.cat([out, x.to(out.dtype)], dim=-1) if self.skip else out
        logits = self.out(self.dropout(features))
        return logits + filled.to(logits.dtype) if self.residual else logits


#: The head registry: name -> class taking (in_features, **settings).
HEADS: dict[str, type[nn.Module]] = {"slice": SliceHead, "gru": GRUHead}
#: Settings of the config's head section that only the sequence head uses.
_SEQUENCE_ONLY = ("hidden", "num_layers")


def build_head(head_cfg: Mapping[str, Any], in_features: int) -> nn.Module:
    """Build a head from its config section, e.g. ``{"name": "gru", "hidden": 128, "dropout": 0.1}``.

    The slice head ignores the sequence-only settings ``hidden`` and ``num_layers``.

    Raises:
        ConfigError: unknown head name or settings.
    """
    settings = dict(head_cfg)
    name = settings.pop("name", None)
    if name not in HEADS:
        raise ConfigError(f"unknown head {name!r} (model.head.name); known heads: {', '.join(HEADS)}")
    if HEADS[name] is SliceHead:
        settings = {k: v for k, v in settings.items() if k not in _SEQUENCE_ONLY}
    try:
        return HEADS[name](in_features, **settings)
    except TypeError as exc:
        raise ConfigError(f"bad settings for head {name!r} (model.head): {settings}: {exc}") from exc
