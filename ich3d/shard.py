"""One shard of a job split over several processes (``--num-parts K --part-id I``), validated once."""

from __future__ import annotations

from dataclasses import dataclass

from ich3d.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` of ``num_parts``: the rows i with i % num_parts == part_id.

    Raises:
        UsageError: num_parts < 1 or part_id outside 0..num_parts - 1.
    """

    num_parts: int = 1
    part_id: int = 0

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise UsageError(f"--num-parts {self.num_parts} must be at least 1")
        if not 0 <= self.part_id < self.num_parts:
            raise UsageError(f"--part-id {self.part_id} must be in 0..{self.num_parts - 1} (--num-parts {self.num_parts})")

    @property
    def whole(self) -> bool:
        """True for the single part of an unsharded job."""
        return self.num_parts == 1
