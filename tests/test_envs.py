"""Built-in tasks: API conventions, exact ground truth, determinism and task rules."""

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from conftest import TASKS
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ocrl.envs
from ocrl.envs.render import Sprite, render_sprites
from ocrl.envs.tasks import COLOURS, OOD_COLOURS, OOD_SHAPES

ENV_IDS = [f"ocrl/{task}{variant}-v0" for task in TASKS for variant in ("", "Continuous")]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_and_sb3_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped)


@pytest.mark.parametrize("resolution", [(64, 64), (48, 80), (128, 128)])
def test_frames_and_ground_truth_have_the_requested_resolution(resolution):
    env = ocrl.envs.make("ocrl/MovingObjects-v0", resolution=resolution)
    frame, info = env.reset(seed=0)
    assert frame.shape == (*resolution, 3) and frame.dtype == np.uint8
    assert env.observation_space.contains(frame)
    truth = info["ground_truth"]
    assert truth["masks"].shape == resolution and truth["masks"].dtype == np.int32
    assert truth["depth"].shape == resolution and truth["depth"].dtype == np.float32


def _rollout(env_id, seed, steps=30, **kwargs):
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(seed)
    frame, info = env.reset(seed=seed)
    frames, masks = [frame], [info["ground_truth"]["masks"]]
    for _ in range(steps):
        frame, _, terminated, truncated, info = env.step(env.action_space.sample())
        frames.append(frame)
        masks.append(info["ground_truth"]["masks"])
        if terminated or truncated:
            break
    return np.array(frames), np.array(masks)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seed_reproduces_and_different_seeds_differ(env_id):
    frames_a, masks_a = _rollout(env_id, seed=5)
    frames_b, masks_b = _rollout(env_id, seed=5)
    frames_c, _ = _rollout(env_id, seed=6)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(masks_a, masks_b)
    assert frames_a[0].tobytes() != frames_c[0].tobytes()


def _solo_coverage(sprite, height, width):
    """How much of each pixel a sprite drawn alone covers, in 0..255."""
    lone = Sprite(sprite.x, sprite.y, sprite.size, sprite.shape, np.ones(3), sprite.depth)
    image, _, _ = render_sprites([lone], height, width, np.zeros(3))
    return image[..., 0].astype(int)


@pytest.mark.parametrize("seed", range(6))
def test_masks_and_depth_match_what_is_drawn_and_occlusion(seed):
    # many large objects on a small arena so that they overlap in depth order
    env = gym.make("ocrl/MovingObjects-v0", num_objects=8, object_size=(0.15, 0.25), resolution=(40, 56))
    frame, info = env.reset(seed=seed)
    for _ in range(3):
        frame, *_, info = env.step(env.action_space.sample())
    truth = info["ground_truth"]
    masks, depth = truth["masks"], truth["depth"]
    sprites = [env.unwrapped.agent, *env.unwrapped.objects]
    height, width = masks.shape
    colours = np.concatenate([[[0, 0, 0]], truth["object_colour"]])
    coverage = np.array([_solo_coverage(sprite, height, width) for sprite in sprites])
    full, touches = coverage == 255, coverage > 0
    alone = touches.sum(axis=0) == 1
    for index, sprite in enumerate(sprites):
        object_id = index + 1
        inside, touched = full[index], touches[index]
        nearer = [j for j, other in enumerate(sprites) if other.depth < sprite.depth]
        hidden = np.any(touches[nearer], axis=0) if nearer else np.zeros_like(inside)
        # an edge pixel no other sprite reaches is the object's when it covers more than half of it
        only_this = alone & touched
        assert np.all((masks[only_this] == object_id) == (coverage[index][only_this] > 127))
        # a mask pixel belongs to a sprite that reaches it
        assert not np.any((masks == object_id) & ~touched)
        # fully covered and not under anything nearer: the pixel is this object's, in its colour
        owned = inside & ~hidden
        assert np.all(masks[owned] == object_id)
        assert np.all(np.abs(frame[owned].astype(int) - np.rint(colours[object_id] * 255)) <= 1)
        # where a nearer sprite fully covers this one, the nearer one is seen
        for j in nearer:
            assert not np.any((masks == object_id) & full[j])
        assert np.all(depth[masks == object_id] == np.float32(sprite.depth))
    assert np.all(depth[masks == 0] == 1.0)
    # ground-truth state agrees with the sprites
    np.testing.assert_allclose(truth["object_position"][:, 0], [2 * s.x - 1 for s in sprites], atol=1e-6)
    assert truth["object_shape"] == tuple(s.shape for s in sprites)


def _touch_env(env_id, **kwargs):
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    return env, env.unwrapped


def _put_agent_left_of(task, sprite):
    task.agent.x = sprite.x - sprite.size - task.agent.size - 0.01
    task.agent.y = sprite.y


@pytest.mark.parametrize("env_id", ["ocrl/ObjectGoal-v0", "ocrl/ObjectComparison-v0", "ocrl/PropertyComparison-v0"])
def test_touching_the_target_succeeds_and_touching_another_fails(env_id):
    env, task = _touch_env(env_id)
    target = task.objects[task.target]
    for other in task.objects:  # move the others far away so only one object is in reach
        if other is not target:
            other.x, other.y = 0.95, 0.95 if target.y < 0.5 else 0.05
    _put_agent_left_of(task, target)
    _, reward, terminated, _, info = env.step(3)  # right
    assert (reward, terminated, info["is_success"]) == (1.0, True, True)

    env, task = _touch_env(env_id)
    wrong = next(i for i in range(len(task.objects)) if i != task.target)
    task.objects[task.target].x, task.objects[task.target].y = 0.9, 0.9 if task.objects[wrong].y < 0.5 else 0.1
    _put_agent_left_of(task, task.objects[wrong])
    _, reward, terminated, _, info = env.step(3)
    assert (reward, terminated, info["is_success"]) == (0.0, True, False)


def test_pushing_the_target_onto_the_goal_succeeds():
    env, task = _touch_env("ocrl/ObjectInteraction-v0", num_objects=1)
    target, goal = task.objects[task.target], task.goal
    goal.x, goal.y = 0.75, 0.5
    target.x, target.y = 0.35, 0.5
    _put_agent_left_of(task, target)
    for step in range(20):
        _, reward, terminated, _, info = env.step(3)
        if terminated:
            break
    assert (reward, info["is_success"]) == (1.0, True)
    assert abs(target.x - goal.x) < goal.size and step >= 4


def test_shaped_rewards_sum_to_the_distance_covered_and_leave_success_alone():
    env, task = _touch_env("ocrl/ObjectInteraction-v0", shaping=2.0)
    plain, _ = _touch_env("ocrl/ObjectInteraction-v0")
    start, total, rng = task.distance_to_go(), 0.0, np.random.default_rng(0)
    for _ in range(60):
        action = int(rng.integers(4))
        _, reward, terminated, _, info = env.step(action)
        _, plain_reward, plain_terminated, _, plain_info = plain.step(action)
        assert (terminated, info["is_success"]) == (plain_terminated, plain_info["is_success"])
        assert plain_reward == float(plain_info["is_success"])
        total += reward - plain_reward
        if terminated:
            break
    assert total == pytest.approx(2.0 * (start - task.distance_to_go()))
    assert total != 0.0
    with pytest.raises(ValueError, match="shaping"):
        gym.make("ocrl/ObjectInteraction-v0", shaping=-1.0)


def test_a_push_into_the_wall_is_blocked():
    env, task = _touch_env("ocrl/ObjectInteraction-v0", num_objects=1)
    target = task.objects[task.target]
    task.goal.x, task.goal.y = 0.2, 0.2
    target.x, target.y = 1.0 - target.size, 0.8
    _put_agent_left_of(task, target)
    before = (task.agent.x, target.x)
    env.step(3)
    assert (task.agent.x, target.x) == before


@pytest.mark.parametrize("seed", range(20))
def test_comparison_tasks_have_exactly_one_odd_object(seed):
    _, task = _touch_env("ocrl/ObjectComparison-v0", num_objects=5)
    task.reset(seed=seed)
    looks = [(tuple(s.colour), s.shape) for s in task.objects]
    counts = Counter(looks)
    assert counts[looks[task.target]] == 1 and len(counts) == 2

    task = gym.make("ocrl/PropertyComparison-v0", num_objects=(3, 6)).unwrapped
    task.reset(seed=seed)
    colours = Counter(tuple(s.colour) for s in task.objects)
    shapes = Counter(s.shape for s in task.objects)
    target = task.objects[task.target]
    unique = [colours[tuple(target.colour)] == 1, shapes[target.shape] == 1]
    assert sum(unique) == 1
    # every other value of the target's unique property repeats, and so does every value of the other
    repeated = [count >= 2 for look, count in (shapes if unique[0] else colours).items()]
    singles = [look for look, count in (colours if unique[0] else shapes).items() if count == 1]
    assert all(repeated) and len(singles) == 1


def test_out_of_distribution_options_and_object_counts():
    task = gym.make(
        "ocrl/ObjectGoal-v0", colours="ood", shapes="ood", num_objects=6, target_colour="orange", target_shape="star"
    ).unwrapped
    task.reset(seed=1)
    ood = {COLOURS[name] for name in OOD_COLOURS}
    assert len(task.objects) == 6
    assert all(tuple(s.colour) in ood and s.shape in OOD_SHAPES for s in task.objects)
    counts = set()
    task = gym.make("ocrl/MovingObjects-v0", num_objects=(2, 5)).unwrapped
    for seed in range(30):
        task.reset(seed=seed)
        counts.add(len(task.objects))
    assert counts == {2, 3, 4, 5}


def test_episodes_end_at_100_steps():
    env = gym.make("ocrl/MovingObjects-v0")
    env.reset(seed=0)
    for step in range(1, 101):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
    assert truncated and step == 100


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"colours": ["red", "mauve"]}, "unknown colours"),
        ({"shapes": "blob"}, "unknown shapes"),
        ({"resolution": 4}, "at least 8x8"),
        ({"num_objects": 40, "object_size": 0.2}, "cannot place"),
    ],
)
def test_bad_options_give_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make("ocrl/ObjectGoal-v0", **kwargs).reset(seed=0)


def test_bad_actions_and_unknown_ids_give_clear_errors():
    env = gym.make("ocrl/ObjectGoal-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.unwrapped.step(7)
    env = gym.make("ocrl/ObjectGoalContinuous-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="ocrl/NoSuchTask-v0"):
        ocrl.envs.make("ocrl/NoSuchTask-v0")
