"""Where models run and in what precision: the one place that decides.

Every trainer, the gate, the reward models, the follow-up scorer and generation take a
:class:`Placement` (or its ``device``) from :func:`placement`, and build each input tensor on the
device of the model that reads it (:func:`device_of`), never on torch's default device: on a GPU
worker a tensor made without a device lands on the CPU beside a model on the GPU, and the step
fails. ``tests/training/test_device_clean.py`` runs each step with the model on another device
than the default to prove it without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Placement:
    """A device ("cpu" or "cuda") and whether to compute in bfloat16 there."""

    device: str
    bf16: bool

    @property
    def use_cpu(self) -> bool:
        return self.device == "cpu"

    @property
    def dtype(self) -> Any:  # torch.dtype
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32


def placement(choice: str = "auto") -> Placement:
    """`choice` ("auto": a visible CUDA GPU, in bfloat16 where it supports it, else the CPU; "cpu";
    "cuda": a GPU or an error) as a Placement."""
    import torch

    if choice not in CHOICES:
        raise ValueError(f"device must be one of {', '.join(CHOICES)}, got {choice!r}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise RuntimeError("no CUDA device is visible to this process")
    use_cuda = cuda and choice != "cpu"
    return Placement(device="cuda" if use_cuda else "cpu", bf16=use_cuda and torch.cuda.is_bf16_supported())


def device_of(model: Any) -> Any:  # torch.device
    """The device of `model`'s parameters: where its inputs must be."""
    return next(model.parameters()).device
