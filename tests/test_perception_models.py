"""Video slot models: shapes, equivariance, per-sample episode starts, clip/step agreement,
training signal, the SmoothSA preheater, sigma annealing, slot codes from masks, frame checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

from ocrl.perception import (
    FAMILIES,
    GaussianQueries,
    InvertedAttentionTransformer,
    PerceptionConfig,
    QueryPreheater,
    SlotAttention,
    SlotTransitioner,
    annealing_factor,
    build_perception,
    perception_config,
)
from ocrl.slots import SlotCodes, codes_from_masks, observation_space, pixel_coordinates


def tiny_model(family: str = "smoothsa", seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_perception(tiny_config(family, **kwargs))


def random_clip(batch: int, length: int, resolution: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length, resolution, resolution, 3), dtype=torch.uint8, generator=generator)


def square_clip(batch: int, length: int, resolution: int = 32) -> torch.Tensor:
    """Coloured squares moving one pixel per frame on black, float (B, T, 3, H, W)."""
    clip = torch.zeros(batch, length, 3, resolution, resolution)
    colours = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.4, 1.0]])
    for sample in range(batch):
        for frame in range(length):
            for index, colour in enumerate(colours):
                top = 3 + 9 * index + frame
                left = 4 + 7 * ((index + sample) % 3) + frame
                clip[sample, frame, :, top : top + 6, left : left + 6] = colour[:, None, None]
    return clip


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("encoder", ["cnn", "resnet"])
@pytest.mark.parametrize("resolution", [64, 128])
def test_shapes(family, encoder, resolution):
    model = tiny_model(family, resolution=resolution, encoder=encoder)
    grid = 16  # the default downsample keeps a 16x16 feature grid: /4 at 64 px, /8 at 128 px
    assert model.encoder.grid_size == grid
    batch, length, slots, dim = 2, 2, model.num_slots, model.slot_dim
    output = model(random_clip(batch, length, resolution), depth=torch.rand(batch, length, resolution, resolution))
    assert output.reconstructions.shape == (batch, length, 3, resolution, resolution)
    assert output.masks.shape == (batch, length, slots, resolution, resolution)
    assert output.slots.shape == (batch, length, slots, dim)
    assert output.attention.shape == (batch, length, slots, grid, grid)
    assert output.position.shape == (batch, length, slots, 4)
    assert output.presence.shape == (batch, length, slots)
    assert output.depth_map.shape == (batch, length, resolution, resolution)
    assert torch.allclose(output.masks.sum(dim=2), torch.ones(()), atol=1e-5)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)
    output.loss.backward()

    state = model.init_state(batch)
    frames = random_clip(batch, 1, resolution)[:, 0]
    codes, state = model.step(frames, state, is_first=True)
    assert codes.slots.shape == (batch, slots, dim) and codes.position.shape == (batch, slots, 4)
    assert codes.presence.shape == (batch, slots) and codes.masks is None and codes.depth_map is None
    codes, state = model.step(frames, state, is_first=False, return_masks=True)
    assert codes.masks.shape == (batch, slots, resolution, resolution)
    assert codes.depth_map.shape == (batch, resolution, resolution)
    for value in (codes.position[..., :2], codes.presence, codes.position[..., 3]):
        assert value.min() >= -1 and value.max() <= 1


def test_presets_and_config_round_trip():
    for family in FAMILIES:
        for size in ("quick", "small", "base"):
            config = perception_config(family, size, 64)
            data = json.loads(json.dumps(config.to_dict()))
            assert PerceptionConfig.from_dict(data) == config
    smooth = perception_config("smoothsa")
    assert (smooth.aggregator.iterations_first, smooth.aggregator.iterations_next) == (3, 1)
    assert smooth.preheater.enabled and smooth.preheater.detach_features
    plain = perception_config("slot_attention")
    assert plain.aggregator.iterations_first == plain.aggregator.iterations_next and not plain.preheater.enabled
    assert perception_config("tf_inv").aggregator.kind == "inverted_attention_transformer"
    with pytest.raises(ValueError, match="unknown keys"):
        PerceptionConfig.from_dict({"encoder": {"chanels": 3}})
    with pytest.raises(ValueError, match="config.slot_dim must be int"):
        PerceptionConfig.from_dict({"slot_dim": "64"})
    with pytest.raises(ValueError, match="unknown perception family"):
        perception_config("slot_atention")


# ----------------------------------------------------------------------------- equivariance


@pytest.mark.parametrize(
    "make",
    [
        lambda: SlotAttention(16, 12, num_heads=2, mlp_hidden_dim=32),
        lambda: InvertedAttentionTransformer(16, 12, num_layers=2, num_heads=2, mlp_hidden_dim=32),
        lambda: InvertedAttentionTransformer(16, 12, num_layers=2, mlp_hidden_dim=32, use_gru=True),
    ],
    ids=["slot_attention", "tf_inv", "tf_inv_gru"],
)
def test_aggregators_are_slot_permutation_equivariant(make):
    torch.manual_seed(0)
    aggregator = make()
    queries, features = torch.randn(2, 5, 16), torch.randn(2, 30, 12)
    permutation = torch.randperm(5)
    slots, attention = aggregator(queries, features, num_iterations=2)
    permuted_slots, permuted_attention = aggregator(queries[:, permutation], features, num_iterations=2)
    assert torch.allclose(permuted_slots, slots[:, permutation], atol=1e-5)
    assert torch.allclose(permuted_attention, attention[:, permutation], atol=1e-6)
    assert torch.allclose(attention.sum(dim=1), torch.ones(()), atol=1e-5)  # softmax over slots
    # and invariant to the order of the inputs
    shuffled_slots, _ = aggregator(queries, features[:, torch.randperm(30)], num_iterations=2)
    assert torch.allclose(shuffled_slots, slots, atol=1e-5)


def test_preheater_and_transitioner_are_slot_permutation_equivariant():
    torch.manual_seed(0)
    queries, features, permutation = torch.randn(2, 5, 16), torch.randn(2, 30, 12), torch.randperm(5)
    preheater = QueryPreheater(16, 12, num_heads=2, mlp_hidden_dim=32)
    assert torch.allclose(
        preheater(queries[:, permutation], features), preheater(queries, features)[:, permutation], atol=1e-5
    )
    transitioner = SlotTransitioner(16, num_layers=2, num_heads=2, mlp_hidden_dim=32)
    assert torch.allclose(transitioner(queries[:, permutation]), transitioner(queries)[:, permutation], atol=1e-5)


# ----------------------------------------------------------------------------- recurrence


@pytest.mark.parametrize("family", ["smoothsa", "tf_inv"])
def test_is_first_mixes_per_sample(family):
    config = tiny_config(family)
    config.aggregator.iterations_first, config.aggregator.iterations_next = 3, 1  # differing counts make mixing visible
    torch.manual_seed(0)
    model = build_perception(config).eval()
    clip = random_clip(4, 3, seed=1)
    flags = [[True] * 4, [True, False, False, True], [False, True, False, False]]

    state = model.init_state(4)
    batched = []
    for frame, is_first in enumerate(flags):
        codes, state = model.step(clip[:, frame], state, is_first=np.array(is_first))
        batched.append(codes.slots)

    for sample in range(4):
        single = model.init_state(1)
        for frame, is_first in enumerate(flags):
            codes, single = model.step(clip[sample : sample + 1, frame], single, is_first=[is_first[sample]])
            assert torch.allclose(codes.slots[0], batched[frame][sample], atol=1e-5), (sample, frame)

    # a stream that starts again ignores its past: same slots as a fresh state on that frame
    fresh, _ = model.step(clip[:, 1], model.init_state(4), is_first=True)
    assert torch.allclose(batched[1][[0, 3]], fresh.slots[[0, 3]], atol=1e-5)
    assert not torch.allclose(batched[1][[1, 2]], fresh.slots[[1, 2]], atol=1e-3)


def test_unstarted_streams_count_as_first_and_bad_flags_are_refused():
    model = tiny_model().eval()
    frames = random_clip(2, 1)[:, 0]
    first, _ = model.step(frames, model.init_state(2), is_first=True)
    implicit, _ = model.step(frames, model.init_state(2), is_first=False)
    assert torch.allclose(first.slots, implicit.slots)
    with pytest.raises(ValueError, match=r"is_first must be a bool or have shape \(2,\)"):
        model.step(frames, model.init_state(2), is_first=[True, False, True])
    with pytest.raises(ValueError, match="got 2 frames for a state of 3 streams"):
        model.step(frames, model.init_state(3))


@pytest.mark.parametrize("family", FAMILIES)
def test_clip_forward_equals_stepping(family):
    model = tiny_model(family).eval()
    model.depth_supervised.fill_(True)
    clip = random_clip(2, 3, seed=2)
    with torch.no_grad():
        output = model(clip)
    state = model.init_state(2)
    for frame in range(3):
        codes, state = model.step(clip[:, frame], state, is_first=frame == 0, return_masks=True)
        assert torch.allclose(codes.slots, output.slots[:, frame], atol=1e-5)
        assert torch.allclose(codes.masks, output.masks[:, frame], atol=1e-5)
        assert torch.allclose(codes.position, output.position[:, frame], atol=1e-5)
        assert torch.allclose(codes.presence, output.presence[:, frame], atol=1e-5)
        assert torch.allclose(codes.depth_map, output.depth_map[:, frame], atol=1e-5)
    # without masks, x, y, size and presence come from the last attention map on the feature grid
    state = model.init_state(2)
    for frame in range(3):
        codes, state = model.step(clip[:, frame], state, is_first=frame == 0)
        position, presence = codes_from_masks(output.attention[:, frame])
        assert torch.allclose(codes.position[..., :3], position[..., :3], atol=1e-5)
        assert torch.allclose(codes.presence, presence, atol=1e-5)
        assert torch.allclose(codes.position[..., 3], model.decoder.read_depth(output.slots[:, frame]).clamp(0, 1))


def test_depth_is_unknown_until_trained_with_depth():
    model = tiny_model("slot_attention")
    clip = square_clip(2, 2)
    assert model(clip).depth_map is None
    for return_masks in (False, True):
        codes, _ = model.step(clip[:, 0], model.init_state(2), True, return_masks=return_masks)
        assert torch.all(codes.position[..., 3] == 0.5) and codes.depth_map is None
    model(clip, depth=torch.rand(2, 2, 32, 32)).loss.backward()  # a training step with depth
    assert bool(model.depth_supervised)
    codes, _ = model.step(clip[:, 0], model.init_state(2), True, return_masks=True)
    assert codes.depth_map is not None and not torch.all(codes.position[..., 3] == 0.5)


def test_conditional_queries():
    model = tiny_model("smoothsa", initializer="conditional").eval()
    frames = random_clip(2, 1)[:, 0]
    boxes = torch.rand(2, 3, 4)
    codes, state = model.step(frames, model.init_state(2), is_first=True, conditions=boxes)
    other, _ = model.step(frames, model.init_state(2), is_first=True, conditions=boxes.flip(1))
    assert torch.allclose(other.slots, codes.slots.flip(1), atol=1e-5)  # queries follow their conditions
    model.step(frames, state, is_first=False)  # later frames need no conditions
    with pytest.raises(ValueError, match="conditional queries need conditions"):
        model.step(frames, model.init_state(2), is_first=True)
    assert model(random_clip(2, 2), conditions=boxes).slots.shape == (2, 2, 3, 16)


# ----------------------------------------------------------------------------- training signal


def overfit(model, parameters, names, steps=30, lr=1e-2):
    """Mean of each named loss over the first and the last 5 of ``steps`` Adam steps on one batch."""
    clip = square_clip(2, 2)
    depth = torch.where(clip.sum(dim=2) > 0, 0.4, 1.0)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    history = []
    for step in range(steps):
        model.set_step(step)
        output = model(clip, depth=depth)
        optimizer.zero_grad()
        sum(output.losses[name] for name in names).backward()
        optimizer.step()
        history.append(output.losses)
    return {
        name: (
            np.mean([entry[name].item() for entry in history[:5]]),
            np.mean([entry[name].item() for entry in history[-5:]]),
        )
        for name in history[0]
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_decrease_when_overfitting_a_tiny_batch(family):
    model = tiny_model(family, seed=1)
    losses = overfit(model, model.parameters(), ["reconstruction", "depth"])
    assert ("preheat" in losses) == (family == "smoothsa")
    assert set(losses) >= {"reconstruction", "depth"}
    for name in ("reconstruction", "depth"):
        start, end = losses[name]
        assert end < 0.8 * start, f"{name}: {start:.4g} -> {end:.4g}"


def test_self_distilled_heads_learn_their_targets():
    # the preheater and the depth probe chase targets that move while the whole model trains;
    # with the rest frozen their targets hold still and their losses must fall
    model = tiny_model("smoothsa", seed=1)
    parameters = [
        *model.preheater.parameters(),
        *model.initializer.parameters(),
        *model.decoder.depth_readout.parameters(),
    ]
    losses = overfit(model, parameters, ["preheat", "depth"], lr=3e-3)
    for name in ("preheat", "depth"):
        start, end = losses[name]
        assert end < 0.5 * start, f"{name}: {start:.4g} -> {end:.4g}"


def test_preheater_gets_only_its_own_loss_and_aggregator_starts_from_stopped_queries():
    config = tiny_config("smoothsa")
    config.preheater.loss_weight = 100.0
    torch.manual_seed(0)
    model = build_perception(config)
    output = model(square_clip(2, 2))
    assert output.loss.item() == pytest.approx(
        output.losses["reconstruction"].item() + 100 * output.losses["preheat"].item(), rel=1e-5
    )
    output.losses["reconstruction"].backward()
    # Eq. 17: no reconstruction gradient reaches the preheater or the (cold-start) initializer
    assert all(parameter.grad is None or not parameter.grad.any() for parameter in model.preheater.parameters())
    assert model.initializer.mean.grad is None or not model.initializer.mean.grad.any()
    model.zero_grad()
    model(square_clip(2, 2)).losses["preheat"].backward()
    assert any(parameter.grad is not None and parameter.grad.any() for parameter in model.preheater.parameters())
    # stop-gradient features: the preheat loss trains the preheater and initializer only
    for part in (model.aggregator, model.encoder, model.decoder, model.transitioner):
        assert all(parameter.grad is None or not parameter.grad.any() for parameter in part.parameters())


def test_depth_is_a_probe_and_gradient_groups_split_by_loss():
    model = tiny_model("smoothsa", seed=1)
    clip = square_clip(2, 2)
    model(clip, depth=torch.rand(2, 2, 32, 32)).losses["depth"].backward()
    # depth supervision trains the probe only: slots and masks are not shaped by it
    assert any(
        parameter.grad is not None and parameter.grad.any() for parameter in model.decoder.depth_readout.parameters()
    )
    for name, parameter in model.named_parameters():
        if not name.startswith("decoder.depth_readout."):
            assert parameter.grad is None or not parameter.grad.any(), name
    preheat, rest = model.gradient_groups()
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in preheat} == {"preheater"}
    assert len(preheat) + len(rest) == len(list(model.parameters())) and not {id(p) for p in preheat} & {
        id(p) for p in rest
    }
    assert len(tiny_model("slot_attention").gradient_groups()) == 1


def test_preheated_queries_are_used_from_the_start_step_on():
    config = tiny_config("smoothsa")
    config.preheater.start_step = 100
    torch.manual_seed(0)
    model = build_perception(config).eval()
    frames = random_clip(2, 1)[:, 0]
    features = model.encoder(frames.movedim(-1, 1).float() / 255)
    queries = model.initializer(2)
    cold, _, preheated = model.first_frame(features)
    assert preheated is not None  # trained all along
    torch.testing.assert_close(cold, model.aggregator(queries, features, model.iterations_first)[0])
    model.set_step(100)
    warm, _, _ = model.first_frame(features)
    torch.testing.assert_close(warm, model.aggregator(preheated, features, model.iterations_first)[0])
    assert bool(model.preheater.active) and "preheater.active" in model.state_dict()  # kept by checkpoints


def test_sigma_annealing():
    assert annealing_factor(0, 100) == 1.0
    assert annealing_factor(50, 100) == pytest.approx(0.5)
    assert annealing_factor(100, 100) == 0.0 and annealing_factor(10_000, 100) == 0.0
    assert annealing_factor(10**6, 0) == 1.0  # no annealing
    factors = [annealing_factor(step, 100) for step in range(0, 101, 10)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))

    torch.manual_seed(0)
    queries = GaussianQueries(num_slots=4, slot_dim=8, anneal_steps=100).train()
    spread = lambda: (queries(256) - queries.mean).std().item()
    start = spread()
    queries.set_step(50)
    assert spread() == pytest.approx(start / 2, rel=0.1)
    queries.set_step(100)
    assert torch.equal(queries(3), queries.mean.expand(3, 4, 8))
    queries.set_step(0)
    assert torch.equal(queries.eval()(3), queries.mean.expand(3, 4, 8))  # per-slot means: deterministic in eval

    shared = GaussianQueries(num_slots=4, slot_dim=8, per_slot_means=False).eval()
    sample = shared(1)
    assert not torch.allclose(sample[0, 0], sample[0, 1])  # one shared mean: the noise tells slots apart

    model = tiny_model("slot_attention")
    model.set_step(123)
    assert int(model.initializer.step) == 123


# ----------------------------------------------------------------------------- slot codes


def test_codes_from_masks_on_synthetic_masks():
    height, width = 32, 40
    x, y = pixel_coordinates(height, width)
    masks = torch.zeros(1, 4, height, width)
    masks[0, 1, 4:12, 20:28] = 1  # an 8x8 square
    disc = (x[None, :] - 0.5).square() + (y[:, None] + 0.25).square() <= 0.2**2
    masks[0, 2][disc] = 1
    masks[0, 0] = 1 - masks[0, 1] - masks[0, 2]  # background; slot 3 is empty
    depth = torch.stack([torch.full((height, width), value) for value in (1.0, 0.3, 0.6, 0.5)])[None]
    position, presence = codes_from_masks(masks, depth)

    expected_x, expected_y = x[20:28].mean(), y[4:12].mean()
    step_x, step_y = 2 / width, 2 / height
    expected_size = math.sqrt(((64 - 1) / 12 * step_x**2 + (64 - 1) / 12 * step_y**2) / 2)  # discrete uniform variance
    assert position[0, 1].tolist() == pytest.approx(
        [expected_x.item(), expected_y.item(), expected_size, 0.3], abs=1e-5
    )
    assert position[0, 2, :2].tolist() == pytest.approx([0.5, -0.25], abs=0.02)
    assert position[0, 2, 2].item() == pytest.approx(0.2 / 2, abs=0.01)  # a disc of radius r has size r / 2
    assert position[0, 2, 3].item() == pytest.approx(0.6)
    assert presence[0, :3].min() > 0.99 and presence[0, 3] < 1e-6

    # soft masks, as attention gives: everyone gets a little everywhere; centres must not move
    soft = masks * 0.9 + 0.1 / 4
    position_soft, presence_soft = codes_from_masks(soft, depth[:, 0])
    assert position_soft[0, 1, :3].tolist() == pytest.approx(position[0, 1, :3].tolist(), abs=0.01)
    assert presence_soft[0, :3].min() > 0.99 and presence_soft[0, 3] < 0.01
    assert position_soft[0, :, 3].tolist() == pytest.approx([1.0] * 4)  # scene depth broadcasts over slots

    position_none, _ = codes_from_masks(masks)
    assert torch.all(position_none[..., 3] == 0.5)  # unknown depth
    # a small object of 16 pixels of a 64x64 frame still reads as present
    small = torch.zeros(1, 2, 64, 64)
    small[0, 1, 10:14, 10:14] = 1
    small[0, 0] = 1 - small[0, 1]
    assert codes_from_masks(small)[1][0, 1] > 0.95


def test_slot_codes_schema():
    codes = SlotCodes(
        torch.randn(2, 3, 5),
        torch.zeros(2, 3, 4),
        torch.ones(2, 3),
        masks=torch.full((2, 3, 4, 4), 1 / 3),
        depth_map=torch.rand(2, 4, 4),
    )
    arrays = codes.to_numpy()
    assert set(arrays) == {"slots", "position", "presence", "masks", "depth_map"}
    assert all(array.dtype == np.float32 for array in arrays.values())
    space = observation_space(3, 5, mask_size=(4, 4), depth_map=True)
    assert space.contains({key: value[0] for key, value in arrays.items()})
    assert "masks" not in SlotCodes(codes.slots, codes.position, codes.presence).to_numpy()
    assert SlotCodes.from_numpy(arrays).slots.shape == (2, 3, 5)
    assert codes[1].slots.shape == (3, 5) and codes[1].depth_map.shape == (4, 4)
    with pytest.raises(ValueError, match="position"):
        SlotCodes(torch.randn(2, 3, 5), torch.zeros(2, 4, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="presence"):
        SlotCodes(torch.randn(2, 3, 5), torch.zeros(2, 3, 4), torch.ones(2))


# ----------------------------------------------------------------------------- frame checks


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 32, 32, 3), np.int64), "must be uint8 .* or float .*got dtype torch.int64"),
        (np.zeros((2, 3, 32, 32), np.uint8), r"uint8 frames must be \(B, H, W, 3\).*channels-first"),
        (np.zeros((2, 32, 32, 3), np.float32), r"float frames must be \(B, 3, H, W\).*channels-last"),
        (np.zeros((2, 32, 32, 4), np.uint8), r"uint8 frames must be \(B, H, W, 3\) RGB, got shape \(2, 32, 32, 4\)"),
        (np.zeros((32, 32, 3), np.uint8), r"uint8 frames must be \(B, H, W, 3\)"),
        (np.full((2, 3, 32, 32), np.nan, np.float32), "NaN"),
        (np.full((2, 3, 32, 32), 255.0, np.float32), r"must lie in \[0, 1\], got values in \[255, 255\]"),
        (np.zeros((2, 48, 32, 3), np.uint8), "takes 32x32 frames, got 48x32"),
        ([[0]], "numpy array or a torch tensor"),
    ],
)
def test_bad_frames_give_clear_errors(frames, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.step(frames, model.init_state(2), is_first=True)


def test_bad_clips_and_depth_give_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"uint8 frames must be \(B, T, H, W, 3\)"):
        model(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"depth must be \(B, T, H, W\)"):
        model(random_clip(2, 2), depth=torch.rand(2, 2, 16, 16))
    assert not bool(model.depth_supervised)
    config = tiny_config()
    config.decoder.predict_depth = False
    with pytest.raises(ValueError, match="decoder predicts no depth"):
        build_perception(config)(random_clip(2, 2), depth=torch.rand(2, 2, 32, 32))


@pytest.mark.parametrize("family", FAMILIES)
def test_runs_under_bfloat16_autocast(family):
    # users train on GPUs with AMP; CPU autocast exercises the same casts
    model = tiny_model(family)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(random_clip(2, 2), depth=torch.rand(2, 2, 32, 32))
        output.loss.backward()
        state = model.init_state(3)
        _, state = model.step(random_clip(3, 1)[:, 0], state, True)
        codes, _ = model.step(random_clip(3, 1)[:, 0], state, [True, False, False], return_masks=True)
    assert torch.isfinite(output.loss) and codes.position.dtype == torch.float32
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters() if parameter.grad is not None)
