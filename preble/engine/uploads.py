"""Host-to-device copies that do not wait for the device."""

from __future__ import annotations

import numpy as np
import torch


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` (a list or an array) as a tensor on `device`. On CUDA the copy goes through pinned
    memory and is queued behind the work already launched: a copy from pageable memory may wait
    for that work, which would stall an engine that prepares a step while the last one runs."""
    host = torch.as_tensor(np.asarray(values), dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
