"""Where and in which precision a run computes: one code path, CPU in float32, CUDA in bf16."""

from __future__ import annotations

import torch
from torch import nn

from phases.config.validation import ConfigError


def resolve_device(name: str, job_number: int = 0) -> torch.device:
    """`auto` is CUDA when present, else the CPU. With several GPUs, job `job_number` of a local sweep
    takes GPU (job_number mod GPUs), so parallel jobs spread over the GPUs (hydra_plugins/phases_launcher)."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", job_number % torch.cuda.device_count())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", name, "auto or cpu: this machine has no CUDA device")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores; bf16 needs no loss scaling); plain float32 on CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def uses_channels_last(device: torch.device) -> bool:
    # channels_last lets cuDNN pick its fastest bf16 convolution kernels; on CPU it brings nothing here.
    return device.type == "cuda"


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    if uses_channels_last(device):
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)
