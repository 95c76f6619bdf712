"""Object-centric observation wrappers: spaces, env checkers, episode state, batched vector
encoding that agrees with the single-env wrapper, autoreset, adapters, and bad input."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from gymnasium.wrappers import TimeLimit
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import ocrl.envs
from ocrl.wrappers import ObjectCentricObservation, ObjectCentricVecEnv, ObjectCentricVectorObservation, SlotEncoder

ENV = "ocrl/ObjectGoal-v0"


def sprite_env(steps: int | None = None, **kwargs) -> gym.Env:
    env = ocrl.envs.make(ENV, **kwargs)
    return env if steps is None else TimeLimit(env, steps)


def test_single_env_wrapper_passes_the_checkers(tiny_perception):
    env = ObjectCentricObservation(sprite_env(), tiny_perception)
    assert set(env.observation_space.spaces) == {"slots", "position", "presence"}
    assert env.observation_space["slots"].shape == (3, 16)
    gymnasium_check_env(env, skip_render_check=True)
    sb3_check_env(ObjectCentricObservation(sprite_env(), tiny_perception), warn=False)


def test_reset_restarts_the_recurrent_state_and_seeding_reproduces(tiny_perception):
    env = ObjectCentricObservation(sprite_env(), tiny_perception)
    first, _ = env.reset(seed=3)
    for _ in range(3):
        later, *_ = env.step(env.action_space.sample())
    again, _ = env.reset(seed=3)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert env.observation_space[key].contains(later[key])
    # the first frame is encoded with first-frame iterations from cold queries, not from the
    # previous episode's slots: a fresh wrapper gives the same codes
    fresh, _ = ObjectCentricObservation(sprite_env(), tiny_perception).reset(seed=3)
    np.testing.assert_allclose(fresh["slots"], first["slots"], atol=1e-6)


def test_any_frame_size_and_render_frames_and_kept_observation(tiny_perception):
    wide = ObjectCentricObservation(sprite_env(resolution=(48, 80)), tiny_perception)
    codes, _ = wide.reset(seed=0)
    assert codes["slots"].shape == (3, 16) and wide.observation_space.contains(codes)

    class StateEnv(gym.Env):
        """A vector-state env whose frames come only from render()."""

        observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        action_space = gym.spaces.Discrete(2)
        metadata = {"render_modes": ["rgb_array"]}

        def __init__(self, render_mode=None):
            self.render_mode = render_mode

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action):
            return np.full(2, 0.5, np.float32), 0.0, False, False, {}

        def render(self):
            return np.full((40, 40, 3), 200, np.uint8)

    env = ObjectCentricObservation(StateEnv(render_mode="rgb_array"), tiny_perception, keep_observation=True)
    codes, _ = env.reset(seed=0)
    assert set(codes) == {"slots", "position", "presence", "observation"}
    assert env.observation_space.contains(codes)
    with pytest.raises(ValueError, match="offers no frames"):
        ObjectCentricObservation(StateEnv(), tiny_perception)


def test_masks_and_depth_map_keys(tiny_perception):
    env = ObjectCentricObservation(sprite_env(), tiny_perception, keys=("slots", "masks", "depth_map"))
    codes, _ = env.reset(seed=0)
    assert codes["masks"].shape == (3, 32, 32) and codes["depth_map"].shape == (32, 32)
    np.testing.assert_allclose(codes["masks"].sum(axis=0), 1.0, atol=1e-3)
    assert env.observation_space.contains(codes)
    with pytest.raises(ValueError, match="keys must be"):
        ObjectCentricObservation(sprite_env(), tiny_perception, keys=("slots", "colour"))


def single_env_codes(tiny_perception, seeds, actions, steps):
    """Codes of one ObjectCentricObservation per sub-env, resetting on episode end like a vector env."""
    result = []
    for index, seed in enumerate(seeds):
        env = ObjectCentricObservation(sprite_env(steps), tiny_perception)
        codes, _ = env.reset(seed=seed)
        stream = [codes]
        for action in actions[:, index]:
            codes, _, terminated, truncated, _ = env.step(action)
            stream.append(codes)
            if terminated or truncated:
                codes, _ = env.reset()
                stream.append(codes)
        result.append(stream)
    return result


# Batched and single encodings differ by float noise (about 1e-4: kernels depend on batch size),
# while a wrong first-frame flag changes slots by far more. Slots are compared, not positions:
# those come from argmax-won pixels, where such noise can flip a near-tie of an untrained model.


def test_gymnasium_vector_wrapper_matches_single_env_wrapper_across_autoresets(tiny_perception):
    num_envs, steps = 3, 4
    vector = ObjectCentricVectorObservation(
        gym.vector.SyncVectorEnv([lambda: sprite_env(steps)] * num_envs), tiny_perception
    )
    actions = np.random.default_rng(0).integers(0, 4, size=(10, num_envs))
    codes, _ = vector.reset(seed=[10, 20, 30])
    assert vector.observation_space.contains(codes)
    batched = [codes]
    for action in actions:
        codes, *_ = vector.step(action)
        batched.append(codes)
    # NEXT_STEP autoreset: the reset frame comes one step after the last frame, with no action
    expected = single_env_codes(tiny_perception, [10, 20, 30], actions, steps)
    for index in range(num_envs):
        for step, codes in enumerate(batched):
            np.testing.assert_allclose(codes["slots"][index], expected[index][step]["slots"], atol=1e-3)


def test_same_step_autoreset_matches_single_env_wrapper(tiny_perception):
    """SAME_STEP: the step that ends an episode returns the next episode's reset frame, which
    must be encoded as a first frame, as the single-env wrapper encodes it after reset()."""
    num_envs, steps, seeds = 3, 4, [10, 20, 30]
    envs = gym.vector.SyncVectorEnv(
        [lambda: sprite_env(steps)] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    vector = ObjectCentricVectorObservation(envs, tiny_perception)
    actions = np.random.default_rng(1).integers(0, 4, size=(10, num_envs))
    codes, _ = vector.reset(seed=seeds)
    batched, ends = [codes], []
    for action in actions:
        codes, _, terminated, truncated, _ = vector.step(action)
        batched.append(codes)
        ends.append(terminated | truncated)
    assert np.any(ends)  # the comparison crosses autoresets
    for index, seed in enumerate(seeds):
        env = ObjectCentricObservation(sprite_env(steps), tiny_perception)
        expected, _ = env.reset(seed=seed)
        np.testing.assert_allclose(batched[0]["slots"][index], expected["slots"], atol=1e-3)
        for step, action in enumerate(actions[:, index], start=1):
            expected, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                expected, _ = env.reset()
            np.testing.assert_allclose(batched[step]["slots"][index], expected["slots"], atol=1e-3)


def test_sb3_vec_env_wrapper_matches_single_env_wrapper_and_encodes_terminal_frames(tiny_perception):
    num_envs, steps = 2, 3
    venv = ObjectCentricVecEnv(DummyVecEnv([lambda: sprite_env(steps)] * num_envs), tiny_perception)
    venv.seed(5)
    actions = np.random.default_rng(1).integers(0, 4, size=(7, num_envs))
    codes = venv.reset()
    # SB3: the reset frame replaces the last frame in the same step; the last frame moves to info
    expected = single_env_codes(tiny_perception, [5, 6], actions, steps)
    position = [0] * num_envs
    for index in range(num_envs):
        np.testing.assert_allclose(codes["slots"][index], expected[index][0]["slots"], atol=1e-3)
    for action in actions:
        codes, _, dones, infos = venv.step(action)
        for index in range(num_envs):
            position[index] += 1
            if dones[index]:
                terminal = infos[index]["terminal_observation"]
                np.testing.assert_allclose(terminal["slots"], expected[index][position[index]]["slots"], atol=1e-3)
                position[index] += 1
            np.testing.assert_allclose(codes["slots"][index], expected[index][position[index]]["slots"], atol=1e-3)


@pytest.mark.parametrize(
    "env_id, kwargs",
    [("MiniGrid-DoorKey-5x5-v0", {"tile_size": 8}), ("dm_control/cartpole-swingup-v0", {"resolution": 48})],
)
def test_adapters_wrap(tiny_perception, env_id, kwargs):
    env = ObjectCentricObservation(ocrl.envs.make(env_id, **kwargs), tiny_perception)
    codes, _ = env.reset(seed=0)
    for _ in range(3):
        codes, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(codes)


def test_bad_frames_give_clear_errors(tiny_perception):
    encoder = SlotEncoder(tiny_perception, num_streams=1)
    good = np.zeros((1, 40, 40, 3), np.uint8)
    encoder.encode(good)
    with pytest.raises(ValueError, match="dtype int64"):
        encoder.encode(good.astype(np.int64))
    with pytest.raises(ValueError, match=r"RGB \(H, W, 3\)"):
        encoder.encode(np.zeros((1, 40, 40, 4), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        encoder.encode(np.full((1, 40, 40, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        encoder.encode(np.full((1, 40, 40, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="too small"):
        encoder.encode(np.zeros((1, 6, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        encoder.encode(np.zeros((1, 1, 40, 40, 3), np.uint8))  # a stack of frames is not a frame
    with pytest.raises(ValueError, match="no perception model 'no-such-model'"):
        SlotEncoder("no-such-model")


def test_stacked_frames_are_not_frames():
    from ocrl.wrappers import frame_source

    stacked = gym.spaces.Box(0, 255, (4, 32, 32, 3), np.uint8)
    assert frame_source(stacked) is None and frame_source(gym.spaces.Dict({"pixels": stacked})) is None
    assert frame_source(gym.spaces.Box(0, 255, (32, 32, 3), np.uint8)) == "observation"


def test_float_frames_in_0_1_encode_like_their_uint8_frames(tiny_perception):
    """The bounds 0 and 1 themselves are valid: black and white pixels."""
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[0, :16] = 255
    frames[1, :, :8] = 255
    as_uint8 = SlotEncoder(tiny_perception, num_streams=2).encode(frames)
    as_float = SlotEncoder(tiny_perception, num_streams=2).encode(frames.astype(np.float32) / 255)
    for key in as_uint8:
        np.testing.assert_allclose(as_float[key], as_uint8[key], atol=1e-6)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SlotEncoder(tiny_perception, num_streams=1).encode(np.full((1, 32, 32, 3), -1e-3, np.float32))


def test_default_model_is_the_shipped_one():
    import ocrl

    assert ocrl.DEFAULT_PERCEPTION in ocrl.shipped_models()
    env = ObjectCentricObservation(sprite_env())
    codes, _ = env.reset(seed=0)
    assert codes["slots"].shape == (env.perception.num_slots, env.perception.slot_dim)
    assert env.perception.resolution == 64 and bool(env.perception.depth_supervised)
    # trained, not collapsed: the slots differ from one another
    spread = codes["slots"].std(axis=0).mean() / np.linalg.norm(codes["slots"], axis=1).mean()
    assert spread > 0.02
