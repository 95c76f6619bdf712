"""The time scan and the stacking of its outputs, driven by a cumulative-sum cell."""

import numpy as np
import pytest
import torch

from ocrl.scan import scan, stack_over_time
from ocrl.slots import SlotCodes


def test_a_cumulative_sum_cell_gives_cumsum_over_time():
    values = torch.randn(3, 5, 2)  # (B, T, D)

    def add(total, value):
        total = total + value
        return {"total": total, "pair": (total, value)}, total

    outputs, last = scan(add, torch.zeros(3, 2), values.unbind(1))
    torch.testing.assert_close(outputs["total"], values.cumsum(1))
    torch.testing.assert_close(outputs["pair"][1], values)
    torch.testing.assert_close(last, values.sum(1))
    with pytest.raises(ValueError, match="at least one step"):
        scan(add, torch.zeros(3, 2), [])


def test_numpy_outputs_stack_as_numpy():
    values = np.random.default_rng(0).normal(size=(3, 5, 2))
    outputs, _ = scan(lambda _, t: ({"value": values[:, t]}, None), None, range(5))
    assert isinstance(outputs["value"], np.ndarray)
    np.testing.assert_array_equal(outputs["value"], values)


def _codes(batch: tuple[int, ...], masks: bool) -> SlotCodes:
    return SlotCodes(
        torch.randn(*batch, 4, 8),
        torch.rand(*batch, 4, 4),
        torch.rand(*batch, 4),
        torch.rand(*batch, 4, 6, 6) if masks else None,
    )


def test_slot_codes_stack_and_cat_along_time_and_keep_optional_fields_only_when_all_have_them():
    steps = [_codes((2,), masks=True) for _ in range(3)]
    stacked = stack_over_time(steps)
    assert stacked.batch_shape == (2, 3) and stacked.masks.shape == (2, 3, 4, 6, 6)
    torch.testing.assert_close(stacked[:, 1].slots, steps[1].slots)
    joined = SlotCodes.cat([stacked, _codes((2, 2), masks=False)])
    assert joined.batch_shape == (2, 5) and joined.masks is None
    torch.testing.assert_close(joined[:, :3].position, stacked.position)
