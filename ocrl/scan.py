"""Loop over time once: a cell handles one step, :func:`scan` owns the loop, outputs are stacked.

As videosaur's ``ScanOverTime``: ``cell(state, step_input) -> (output, state)``; the outputs of
all steps are stacked along the time dim by :func:`stack_over_time`, whatever their structure
(tensors, numpy arrays, :class:`~ocrl.slots.SlotCodes`, dicts or tuples of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ocrl.slots import SlotCodes


def scan(
    cell: Callable[[Any, Any], tuple[Any, Any]], state: Any, inputs: Iterable[Any], dim: int = 1
) -> tuple[Any, Any]:
    """Run ``cell`` over ``inputs`` (one per step) from ``state``; returns (stacked outputs, last state)."""
    outputs = []
    for step_input in inputs:
        output, state = cell(state, step_input)
        outputs.append(output)
    if not outputs:
        raise ValueError("scan needs at least one step")
    return stack_over_time(outputs, dim), state


def stack_over_time(outputs: list[Any], dim: int = 1) -> Any:
    """Per-step outputs (B, ...) to (B, T, ...) (``dim`` 1), recursing into dicts and tuples."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(outputs, dim)
    if isinstance(first, np.ndarray):
        return np.stack(outputs, dim)
    if isinstance(first, SlotCodes):
        return SlotCodes.stack(outputs, dim)
    if isinstance(first, dict):
        return {key: stack_over_time([output[key] for output in outputs], dim) for key in first}
    if isinstance(first, tuple):
        return tuple(stack_over_time(list(parts), dim) for parts in zip(*outputs))
    raise TypeError(f"cannot stack outputs of type {type(first).__name__} over time")
