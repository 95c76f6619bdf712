"""Loci-Segmented: the perception contract, composition, slot assignment, staged training, checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import ocrl
from ocrl.checkpoint import load_trainer_state, save_checkpoint
from ocrl.data.collect import collect
from ocrl.evaluation import evaluate_perception
from ocrl.perception.frames import prepare_frames
from ocrl.perception.loci import SlotImages, build_loci, compose, loci_config
from ocrl.perception.loci import decoder as decoder_module
from ocrl.perception.loci.background import BackgroundOutput
from ocrl.perception.loci.model import LociSlots
from ocrl.perception.loci.training import LociTrainingConfig, pretrain_loci
from ocrl.perception.model import put_streams, take_streams
from ocrl.perception.speed import measure
from ocrl.slots import SlotCodes


def tiny_loci_config(num_slots: int = 3):
    """The quick preset at 32x32, shrunk to a few tens of thousands of parameters."""
    config = loci_config("quick", resolution=32, num_slots=num_slots)
    config.gestalt_dim = 8
    config.background.channels = [4, 8, 8]
    config.background.embed_dim, config.background.num_heads, config.background.num_layers = 16, 2, 1
    config.encoder.channels, config.encoder.kernel_size = 8, 3
    config.decoder.channels, config.decoder.head_channels = 8, 8
    config.transition.hidden_dim, config.transition.num_heads = 16, 2
    config.assignment.warmup_eval = 2
    return config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_loci(tiny_loci_config()).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "moving"
    return collect("ocrl/MovingObjects-v0", 2, path, env_kwargs={"resolution": 32}, num_envs=2, progress=False)


def frames(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)


def test_step_fills_slot_codes_with_contract_shapes(model):
    state = model.init_state(2)
    for first in (True, [False, True], False):
        codes, state = model.step(frames(), state, is_first=first, return_masks=True)
        assert isinstance(codes, SlotCodes)
        assert codes.slots.shape == (2, 3, 24) and codes.slots.dtype == torch.float32
        assert codes.position.shape == (2, 3, 4) and codes.presence.shape == (2, 3)
        assert codes.masks.shape == (2, 3, 32, 32) and codes.depth_map is None  # never trained with depth
        assert bool(((codes.presence >= 0) & (codes.presence <= 1)).all())
        rendering = model.render(state)
        total = rendering.masks.sum(dim=1) + rendering.background_mask
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    codes, _ = model.step(frames(), state)
    assert codes.masks is None


def tensors(state) -> list[torch.Tensor]:
    """Every tensor of a (nested) state dataclass, in field order."""
    if dataclasses.is_dataclass(state):
        return [tensor for item in dataclasses.fields(state) for tensor in tensors(getattr(state, item.name))]
    return [] if state is None else [state]


def test_streams_of_a_state_are_taken_and_put_back_and_terminal_frames_leave_it_alone(model):
    from ocrl.wrappers import SlotEncoder

    encoder = SlotEncoder(model, num_streams=3)
    encoder.encode(frames(3))
    before = encoder.state
    part = take_streams(before, torch.tensor([2, 0]))
    assert part.batch_size == 2 and torch.equal(part.hidden[0], before.hidden[2])
    assert torch.equal(part.prior.gestalt[1], before.prior.gestalt[0])
    for whole, back in zip(tensors(before), tensors(put_streams(before, torch.tensor([2, 0]), part)), strict=True):
        assert torch.equal(whole, back)
    # SB3's terminal frame of stream 1 is encoded without advancing; the next frame advances only stream 1
    encoder.encode(frames(1, seed=3), streams=[1], advance=False)
    assert encoder.state is before
    encoder.encode(frames(1, seed=4), is_first=[True], streams=[1])
    for stream in (0, 2):
        assert torch.equal(encoder.state.hidden[stream], before.hidden[stream])
        assert torch.equal(encoder.state.background_rgb[stream], before.background_rgb[stream])
    assert not torch.equal(encoder.state.background_rgb[1], before.background_rgb[1])


def test_sb3_vec_env_wrapper_runs_loci_through_episode_ends(model):
    from gymnasium.wrappers import TimeLimit
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ocrl.wrappers import ObjectCentricVecEnv

    make = lambda: TimeLimit(ocrl.envs.make("ocrl/ObjectGoal-v0", resolution=32), 2)  # noqa: E731
    venv = ObjectCentricVecEnv(DummyVecEnv([make] * 2), model)
    venv.reset()
    ended = 0
    for _ in range(3):
        codes, _, dones, infos = venv.step(np.zeros(2, dtype=int))
        assert codes["slots"].shape == (2, 3, 24) and np.isfinite(codes["position"]).all()
        for done, info in zip(dones, infos):
            if done:
                ended += 1
                assert info["terminal_observation"]["slots"].shape == (3, 24)
    assert ended >= 2  # every episode ends after two steps


def test_unoccupied_slots_report_nothing(model):
    # a frame the background module calls all background: no slot is seeded
    state = model.init_state(1)
    background = BackgroundOutput(
        torch.full((1, 1, 32, 32), -9.0), torch.zeros(1, 1, 32, 32), torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32)
    )
    empty = model.empty_slots(1)
    images, composition = model.decode(empty, background)
    seeded, fresh = model.seed(empty, composition, background.foreground)
    assert not bool(fresh.any()) and not bool((seeded.occupancy > 0).any())
    codes, _ = model.step(np.zeros((1, 32, 32, 3), np.uint8), state)
    assert codes.presence.shape == (1, 3)


def test_seeding_places_one_slot_per_foreground_blob(model):
    foreground = torch.zeros(1, 1, 32, 32)
    foreground[..., 2:8, 2:8] = 1.0
    foreground[..., 22:30, 20:28] = 1.0
    background = BackgroundOutput(foreground * 9, foreground, torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    _, composition = model.decode(model.empty_slots(1), background)
    model.init_state(1)
    seeded, fresh = model.seed(model.empty_slots(1), composition, foreground)
    assert int(fresh.sum()) == 2  # a seeded blob is removed from the residual: one slot each
    pixels = ((seeded.position[0, fresh[0], :2] + 1) * 16 - 0.5).round().long()
    for x, y in pixels.tolist():
        assert foreground[0, 0, y, x] == 1.0


def test_seeding_grows_regions_only_in_streams_that_want_a_slot(model):
    # stream 0: every slot occupied; stream 1: a bar that takes several flood-fill steps and a
    # blob; stream 2: nothing. Seeding the batch must give each stream what seeding it alone gives.
    foreground = torch.zeros(3, 1, 32, 32)
    foreground[:2, :, 4:7, 2:10] = 1.0
    foreground[:2, :, 20:26, 18:24] = 1.0
    background = BackgroundOutput(foreground * 9, foreground, torch.zeros(3, 3, 32, 32), torch.ones(3, 1, 32, 32))
    slots = model.empty_slots(3)
    slots.occupancy[0] = 1.0
    _, composition = model.decode(model.empty_slots(3), background)
    model.init_state(1)
    seeded, fresh = model.seed(slots, composition, foreground)
    assert fresh.sum(dim=1).tolist() == [0, 2, 0]  # the bar is one part, not two
    assert torch.equal(seeded.position[0], slots.position[0]) and torch.equal(seeded.occupancy[0], slots.occupancy[0])
    for stream in range(3):
        alone = dataclasses.replace(composition, uncovered=composition.uncovered[stream : stream + 1])
        _, fresh_alone = model.seed(take_streams(slots, torch.tensor([stream])), alone, foreground[stream : stream + 1])
        assert int(fresh_alone.sum()) == int(fresh[stream].sum())


def test_decoding_only_occupied_slots_in_chunks_gives_the_images_of_decoding_all(model, monkeypatch):
    torch.manual_seed(1)
    batch, slots = 2, model.num_slots
    gestalt = torch.rand(batch, slots, model.slot_dim)
    position = torch.cat(
        [torch.rand(batch, slots, 2) - 0.5, torch.full((batch, slots, 1), 0.2), torch.randn(batch, slots, 1)], -1
    )
    with torch.no_grad():
        everything = model.decoder(gestalt, position)
        monkeypatch.setattr(decoder_module, "CPU_CHUNK_PIXELS", 2 * 32 * 32)  # two slots at a time
        chunked = model.decoder(gestalt, position)
        for name in ("mask_logits", "depth", "rgb"):
            assert torch.allclose(getattr(chunked, name), getattr(everything, name), atol=1e-5)
        occupancy = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
        foreground = torch.rand(batch, 1, 32, 32)
        background = BackgroundOutput(
            foreground, foreground, torch.rand(batch, 3, 32, 32), torch.rand(batch, 1, 32, 32)
        )
        images, composition = model.decode(LociSlots(gestalt, position, occupancy), background)
        expected = model.compose(everything, occupancy, background)
    occupied = occupancy > 0
    for name in ("mask_logits", "depth", "rgb"):
        assert torch.allclose(getattr(images, name)[occupied], getattr(everything, name)[occupied], atol=1e-5)
    for item in dataclasses.fields(composition):
        assert torch.allclose(getattr(composition, item.name), getattr(expected, item.name), atol=1e-5)


def test_render_decodes_the_rgb_that_step_leaves_out(model):
    state = model.init_state(2)
    for first in (True, False):
        if not first:  # slots to render (the untrained model seeds none by itself)
            torch.manual_seed(2)
            occupancy = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
            position = torch.cat([torch.rand(2, 3, 2) - 0.5, torch.full((2, 3, 1), 0.3), torch.zeros(2, 3, 1)], -1)
            state.prior = LociSlots(torch.rand(2, 3, model.slot_dim), position, occupancy)
        _, state = model.step(frames(seed=3), state, is_first=first)
        assert state.composition.rgb is None
        rendering = model.render(state)
        with torch.no_grad():
            background = model.background(prepare_frames(frames(seed=3), 32, model.device))
            _, composition = model.decode(state.posterior, background)
        assert torch.allclose(rendering.reconstruction, composition.rgb, atol=1e-5)
        assert torch.allclose(rendering.masks, composition.weights, atol=1e-5)
    assert bool((state.posterior.occupancy > 0).any())


def test_draw_turns_codes_back_into_the_frame_of_their_slots(model):
    """Codes alone (a world model predicts nothing else) give the slots' masks and RGB, composed
    by their own masks over the background of a given frame; slots of presence <= 0.5 get none."""
    state = model.init_state(2)
    _, state = model.step(frames(seed=3), state, is_first=True)
    torch.manual_seed(2)
    position = torch.cat([torch.rand(2, 3, 2) - 0.5, torch.full((2, 3, 1), 0.3), torch.randn(2, 3, 1)], -1)
    state.prior = LociSlots(torch.rand(2, 3, model.slot_dim), position, torch.tensor([[1.0, 1, 0], [1, 1, 0]]))
    codes, state = model.step(frames(seed=3), state, is_first=False)
    slots = state.posterior
    presence = slots.occupancy * torch.tensor([[1.0, 1, 1], [1, 0.2, 1]])  # stream 1 loses slot 1
    drawn = model.draw(SlotCodes(codes.slots, codes.position, presence), frames(seed=3))
    with torch.no_grad():
        background = model.background(prepare_frames(frames(seed=3), 32, model.device))
        kept = LociSlots(slots.gestalt, slots.position, (presence > 0.5).float())
        _, expected = model.decode(kept, dataclasses.replace(background, foreground=None))
    assert bool((kept.occupancy.sum(1) > 0).all()) and kept.occupancy[1, 1] == 0
    torch.testing.assert_close(drawn.masks, expected.weights, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(drawn.reconstruction, expected.rgb, atol=1e-4, rtol=1e-4)
    assert float(drawn.masks[1, 1].abs().max()) == 0.0
    torch.testing.assert_close(drawn.masks.sum(1) + drawn.background_mask, torch.ones(2, 32, 32))


def test_composition_sums_to_one_and_the_nearest_slot_wins():
    torch.manual_seed(0)
    batch, slots, size = 2, 4, 8
    logits = torch.randn(batch, slots, size, size) * 5
    depth = torch.rand(batch, slots, size, size)
    images = SlotImages(logits, depth, torch.rand(batch, slots, 3, size, size))
    occupancy = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    result = compose(images, occupancy, torch.rand(batch, 3, size, size), torch.ones(batch, 1, size, size), 0.05)
    total = result.weights.sum(dim=1) + result.background
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert float(result.weights[0, 2].abs().max()) == 0.0 and float(result.weights[1].abs().max()) == 0.0
    # two full masks at one pixel: the nearer takes almost all of it
    images = SlotImages(
        torch.full((1, 2, 1, 1), 20.0), torch.tensor([0.2, 0.6]).view(1, 2, 1, 1), torch.rand(1, 2, 3, 1, 1)
    )
    near = compose(images, torch.ones(1, 2), torch.zeros(1, 3, 1, 1), torch.ones(1, 1, 1, 1), 0.02)
    assert float(near.weights[0, 0]) > 0.99


def test_a_fresh_background_module_puts_the_background_far():
    # from the middle, the quick preset's background stage left a sprite background (1.0) at 0.70
    torch.manual_seed(0)
    depth = build_loci(tiny_loci_config()).background(torch.rand(2, 3, 32, 32)).depth
    assert float(depth.mean()) > 0.8


def test_pixel_head_equals_its_mlp_on_the_concatenated_maps():
    """The head never builds its input; it must compute what the MLP on [upsampled features,
    maps, relative coordinates] computes, values and gradients."""
    torch.manual_seed(0)
    head = decoder_module.PixelHead(channels=8, head=6, extra=4, out=3)
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    grid = torch.randn(5, 8, 4, 4, requires_grad=True)
    position = torch.cat([torch.rand(5, 2) * 2 - 1, torch.rand(5, 1) * 0.3, torch.randn(5, 1)], dim=1)
    maps = torch.rand(5, 2, 16, 16)
    upsampled = torch.nn.functional.interpolate(head.reduce(grid), size=(16, 16), mode="bilinear", align_corners=False)
    reference = head.mlp(torch.cat([upsampled, maps, decoder_module.relative_coordinates(position, 16)], dim=1))
    result = head(grid, 16, position, maps)
    assert torch.allclose(result, reference, atol=1e-5)
    (gradient,) = torch.autograd.grad(result.square().sum(), grid)
    (expected,) = torch.autograd.grad(reference.square().sum(), grid)
    assert torch.allclose(gradient, expected, atol=1e-4)


def test_composition_and_transition_are_permutation_equivariant(model):
    torch.manual_seed(1)
    batch, slots, size = 1, 3, 8
    images = SlotImages(
        torch.randn(batch, slots, size, size),
        torch.rand(batch, slots, size, size),
        torch.rand(batch, slots, 3, size, size),
    )
    occupancy = torch.ones(batch, slots)
    order = torch.tensor([2, 0, 1])
    background = (torch.rand(batch, 3, size, size), torch.ones(batch, 1, size, size))
    result = compose(images, occupancy, *background, 0.05)
    permuted = compose(
        SlotImages(images.mask_logits[:, order], images.depth[:, order], images.rgb[:, order]),
        occupancy,
        *background,
        0.05,
    )
    assert torch.allclose(permuted.weights, result.weights[:, order], atol=1e-6)
    assert torch.allclose(permuted.rgb, result.rgb, atol=1e-6)
    gestalt, position = torch.rand(1, 3, 24), torch.rand(1, 3, 4)
    hidden = torch.rand(1, 3, 1, 16)
    outputs = model.transition(gestalt, position, hidden)
    swapped = model.transition(gestalt[:, order], position[:, order], hidden[:, order])
    for whole, part in zip(outputs, swapped):
        assert torch.allclose(part, whole[:, order], atol=1e-5)


def test_every_stage_trains_its_own_parts():
    torch.manual_seed(0)
    model = build_loci(tiny_loci_config()).train()
    video = torch.rand(2, 2, 3, 32, 32)
    masks = torch.zeros(2, 2, 32, 32, dtype=torch.long)
    masks[..., 4:12, 4:12], masks[..., 18:28, 16:26] = 1, 2
    depth = torch.ones(2, 2, 32, 32)
    depth[masks > 0] = 0.4
    for stage, trained in (
        ("background", {"background"}),
        ("objects", {"encoder", "decoder"}),
        ("full", {"encoder", "decoder", "gate", "transition"}),
    ):
        model.zero_grad(set_to_none=True)
        clip = video if stage == "full" else video[:, :1]
        output = model(clip, stage, masks=masks[:, : clip.shape[1]], depth=depth[:, : clip.shape[1]])
        assert torch.isfinite(output.loss)
        output.loss.backward()
        touched = {name.split(".")[0] for name, parameter in model.named_parameters() if parameter.grad is not None}
        assert touched <= trained and touched & trained
    assert bool(model.depth_supervised)
    # the full stage weighs the L0 of the percept gates and of the GateL0RD gates apart
    transition = model.config.transition
    weights = {"percept_gates": transition.percept_gate_l0, "gates": transition.transition_gate_l0, "coverage": 0.1}
    expected = sum(weights.get(name, 1.0) * value for name, value in output.losses.items())
    assert set(weights) <= set(output.losses) and torch.allclose(output.loss, expected)


def test_bad_inputs_raise_clear_errors(model):
    state = model.init_state(2)
    with pytest.raises(ValueError, match="32x32"):
        model.step(np.zeros((2, 16, 16, 3), np.uint8), state)
    with pytest.raises(ValueError, match="streams"):
        model.step(frames(3), state)
    with pytest.raises(ValueError, match="conditions"):
        model.step(frames(), state, conditions=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="stage"):
        model(torch.rand(1, 1, 3, 32, 32), "everything")
    with pytest.raises(ValueError, match="masks"):
        model(torch.rand(1, 1, 3, 32, 32), "objects")
    config = tiny_loci_config()
    config.resolution = 36
    with pytest.raises(ValueError, match="resolution"):
        build_loci(config)
    config = tiny_loci_config()
    config.assignment.kind = "oracle"
    with pytest.raises(ValueError, match="assignment"):
        build_loci(config)
    config = tiny_loci_config()
    config.transition.percept_gate_l0 = -1.0
    with pytest.raises(ValueError, match="percept_gate_l0"):
        build_loci(config)


def test_checkpoint_round_trip_gives_the_same_codes(model, tmp_path):
    path = save_checkpoint(model, model.config, tmp_path / "loci")
    loaded = ocrl.load_perception(path)
    assert type(loaded).__name__ == "LociModel"
    first, _ = model.step(frames(), model.init_state(2), return_masks=True)
    again, _ = loaded.step(frames(), loaded.init_state(2), return_masks=True)
    for name in ("slots", "position", "presence", "masks"):
        assert torch.equal(getattr(first, name), getattr(again, name))


def test_stage_learning_rates_restart_at_every_stage():
    training = LociTrainingConfig(background_steps=10, object_steps=20, full_steps=10, warmup_steps=2)
    factors = [training.learning_rate_factor(step) for step in range(training.steps)]
    assert [training.stage_at(step) for step in (0, 9, 10, 29, 30)] == [
        "background",
        "background",
        "objects",
        "objects",
        "full",
    ]
    assert factors[0] == factors[10] == factors[30] == 0.5 and factors[1] == factors[11] == 1.0
    assert factors[9] < 0.2 and factors[29] < 0.2


def test_staged_pretraining_resumes_inside_a_stage_and_evaluates(store, tmp_path):
    out = tmp_path / "loci"
    config = tiny_loci_config()
    training = LociTrainingConfig(
        background_steps=2,
        object_steps=2,
        full_steps=1,
        background_batch_size=2,
        object_batch_size=2,
        full_batch_size=1,
        clip_length=2,
        checkpoint_every=1,
        num_workers=0,
        warmup_steps=1,
    )
    stopped = dataclasses.replace(training, object_steps=1, full_steps=0)
    # a run that stopped inside the objects stage (same model config, fewer steps so far)
    pretrain_loci(store.path, out, model_config=config, training=stopped, progress=False)
    assert load_trainer_state(out)["step"] == 3
    pretrain_loci(store.path, out, model_config=config, training=training, seed=3, progress=False)
    assert load_trainer_state(out)["step"] == 5
    assert json.loads((out / "config.json").read_text())["training"]["seed"] == 3
    model = ocrl.load_perception(out)
    scores = evaluate_perception(model, store.path, num_frames=4, progress=False)
    assert 0.0 <= scores["miou"] <= 1.0 and scores["videos"] == 2


def test_cli_refuses_options_that_loci_does_not_take(store, tmp_path, capsys):
    from ocrl.cli import main

    base = ["pretrain", "--model", "loci", "--data", str(store.path), "--out", str(tmp_path / "loci")]
    for extra, message in (
        (["--steps", "3"], "per stage"),
        (["--conditional"], "without ground truth"),
        (["--stage-steps", "0", "0", "0"], "all 0"),
    ):
        assert main([*base, *extra]) != 0
        assert message in capsys.readouterr().err
    for extra in (["--foreground", "median"], ["--stage-steps", "1", "1", "1"]):
        assert main(["pretrain", "--data", str(store.path), "--out", str(tmp_path / "sa"), *extra]) != 0
        assert "--model loci" in capsys.readouterr().err


def test_speed_tool_measures_a_loci_model():
    torch.manual_seed(0)
    results = measure(build_loci(tiny_loci_config()), 2, 1, 2, repeats=1, device="cpu")
    assert results["next frames/s"][0] > 0 and results["train step s"][0] > 0
