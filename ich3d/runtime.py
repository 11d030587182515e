"""Device, mixed precision, distributed (torchrun) and seeding helpers for training and inference."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ich3d.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where and how this process computes.

    Attributes:
        device: the torch device of this process.
        rank, world_size: the process's rank and the number of processes (1 without torchrun).
        amp: mixed precision on (CUDA only): bfloat16 where supported, else float16 with a scaler.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, metrics and checkpoints."""
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context on CUDA when enabled, else a no-op."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is active only for float16 autocast."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)


def select_device(requested: str | None = None) -> torch.device:
    """``requested`` ("cpu", "cuda", "cuda:1", "mps") or the best available: CUDA, else CPU."""
    if requested and requested != "auto":
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested}: not a device name; use cpu, cuda, cuda:<index> or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"--device {requested}: MPS is not available on this machine (use --device cpu)")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"--device {requested}: ich3d runs on cpu, cuda or mps")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup_runtime(requested_device: str | None, amp: bool) -> Runtime:
    """Initialises torch.distributed when launched by torchrun, and picks this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = select_device(requested_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Runtime(device=device, rank=rank, world_size=world_size, amp=amp and device.type == "cuda")


def teardown_runtime() -> None:
    """Closes the process group if this process opened one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from any printable parts (e.g. seed, stage, epoch): stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> torch.Generator:
    """Seeds torch's global RNG (dropout) and returns a CPU generator for sampling/augmentation."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """Every rank's ``obj`` (rank order); just ``[obj]`` without distribution."""
    if runtime.world_size == 1:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(runtime: Runtime) -> None:
    """Waits for every rank (no-op in a single process)."""
    if runtime.world_size > 1:
        dist.barrier()


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode and no gradients inside the block; restores the previous mode after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)
