"""Slot codes of rollouts, encoded once with a frozen perception model and cached on disk.

World models train on the codes an agent would see: each episode of a rollout store is encoded
frame by frame as the wrappers do (:class:`~ocrl.perception.encoder.SlotEncoder`, first-frame treatment
on the reset frame). The cache is a directory per perception model::

    CACHE/info.json                 perception reference and fingerprint, source store
    CACHE/episode-000000.npz        slots (T + 1, K, D), position (T + 1, K, 4), presence
                                    (T + 1, K) float32; actions (T, ...), rewards (T,),
                                    terminated, truncated (T,) bool

Files are written atomically; encoding again skips the episodes already cached (resumable).
The default cache lives inside the store, ``DATA/codes/<fingerprint>``: a perception model's
fingerprint hashes its config and weights, so retraining the model never reuses stale codes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ocrl.agents.ground_truth import GROUND_TRUTH, GroundTruthCodes
from ocrl.data.store import PARSE_ERRORS, RolloutStore, _save_npz, episode_file_name
from ocrl.errors import CorruptFileError, OcrlError
from ocrl.files import write_atomically
from ocrl.perception.encoder import SlotEncoder
from ocrl.scan import scan
from ocrl.slots import CODE_KEYS, SlotCodes

STEP_KEYS = ("actions", "rewards", "terminated", "truncated")
INFO_FILE = "info.json"


def code_source(perception: str, store: RolloutStore, device: str | torch.device | None = None) -> Any:
    """What makes a store's codes: the perception model ``perception`` names (shipped name or
    checkpoint) or, for ``"ground_truth"``, the store's recorded objects
    (:class:`~ocrl.agents.ground_truth.GroundTruthCodes`)."""
    from ocrl.perception.encoder import resolve_model

    if perception == GROUND_TRUTH:
        return GroundTruthCodes(store.env_id, store.header.get("env_kwargs", {}))
    return resolve_model(perception, device)


def perception_fingerprint(model: torch.nn.Module | GroundTruthCodes) -> str:
    """Hex digest (16 characters) of a perception model's weights: their names, shapes and
    values, which tell its architecture and training apart."""
    if isinstance(model, GroundTruthCodes):
        return model.fingerprint
    digest = hashlib.sha256(f"{type(model).__name__} {model.resolution}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def default_cache(store: RolloutStore, model: torch.nn.Module) -> Path:
    return Path(store.path) / "codes" / perception_fingerprint(model)


@torch.no_grad()
def encode_store(
    model: torch.nn.Module | GroundTruthCodes,
    store: RolloutStore | str | os.PathLike,
    cache: str | os.PathLike | None = None,
    perception: str | None = None,
    episodes_per_batch: int = 32,
    progress: bool = True,
) -> Path:
    """Encode every episode of ``store`` into ``cache`` (default :func:`default_cache`); returns it.

    ``perception`` (the model's shipped name or path) is recorded in info.json. Episodes are
    encoded ``episodes_per_batch`` at a time in one batched forward per frame;
    :class:`~ocrl.agents.ground_truth.GroundTruthCodes` reads the recorded objects instead.
    """
    store = store if isinstance(store, RolloutStore) else RolloutStore.open(store)
    fingerprint = perception_fingerprint(model)
    cache = Path(cache) if cache is not None else default_cache(store, model)
    info = {
        "perception": perception,
        "fingerprint": fingerprint,
        "store": str(Path(store.path).resolve()),
        "env_id": store.env_id,
    }
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OcrlError(
            f"cannot create the code cache {cache}: {error.strerror}; pass another cache directory"
        ) from None
    info_path = cache / INFO_FILE
    if info_path.exists():
        known = _read_info(info_path)
        if known.get("fingerprint") != fingerprint:
            raise OcrlError(
                f"{cache} holds codes of another perception model (fingerprint {known.get('fingerprint')}, this one {fingerprint}); pass another cache directory"
            )
    else:
        write_atomically(info_path, lambda file: file.write(json.dumps(info, indent=1).encode()))
    todo = [i for i in range(len(store)) if not (cache / episode_file_name(i)).exists()]
    bar = tqdm(
        total=len(store), initial=len(store) - len(todo), unit="episode", desc="encode codes", disable=not progress
    )
    try:
        for start in range(0, len(todo), episodes_per_batch):
            chunk = todo[start : start + episodes_per_batch]
            episodes = [store.episode(i) for i in chunk]
            if isinstance(model, GroundTruthCodes):
                codes = [model.episode_codes(episode) for episode in episodes]
            else:
                codes = encode_videos(model, [episode.frames() for episode in episodes])
            for index, episode, episode_codes in zip(chunk, episodes, codes):
                arrays = {
                    **episode_codes,
                    "actions": episode.actions,
                    "rewards": episode.rewards.astype(np.float32),
                    "terminated": episode.terminated.astype(bool),
                    "truncated": episode.truncated.astype(bool),
                }
                write_atomically(cache / episode_file_name(index), lambda file, arrays=arrays: _save_npz(file, arrays))
                bar.update(1)
    finally:
        bar.close()
    return cache


def encode_videos(model: torch.nn.Module, videos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Encode videos of different lengths (T_i, H, W, 3) together; shorter ones repeat their last
    frame, and the codes of those frames are dropped."""
    length = max(len(video) for video in videos)
    padded = np.stack([np.concatenate([video, np.repeat(video[-1:], length - len(video), 0)]) for video in videos])
    encoder = SlotEncoder(model, num_streams=len(videos), keys=CODE_KEYS)
    codes, _ = scan(
        lambda _, t: (encoder.encode(padded[:, t], np.full(len(videos), t == 0)), None), None, range(length)
    )
    return [{key: codes[key][row, : len(video)] for key in CODE_KEYS} for row, video in enumerate(videos)]


@dataclass
class Window:
    """A batch of windows of L steps: codes of steps 0..L (L + 1 frames), actions, rewards and
    continuation of the L transitions, and ``valid`` (B, L): transitions inside the episode."""

    codes: SlotCodes  # batch dims (B, L + 1)
    actions: torch.Tensor  # (B, L) or (B, L, A)
    rewards: torch.Tensor  # (B, L)
    continues: torch.Tensor  # (B, L) float, 0 where the episode terminated
    valid: torch.Tensor  # (B, L) float

    def to(self, device: torch.device | str) -> Window:
        return Window(
            self.codes.to(device),
            self.actions.to(device),
            self.rewards.to(device),
            self.continues.to(device),
            self.valid.to(device),
        )


@dataclass
class Transitions:
    """A batch of B single transitions: the codes each leads to (batch dims (B,)), its reward and
    continuation (B,)."""

    codes: SlotCodes
    rewards: torch.Tensor
    continues: torch.Tensor

    def to(self, device: torch.device | str) -> Transitions:
        return Transitions(self.codes.to(device), self.rewards.to(device), self.continues.to(device))


class CodeCache:
    """All episodes of one or several code caches in memory, for sampling windows.

    Episodes are concatenated (cache by cache, in episode order): frame arrays (sum of T_i + 1,
    ...) and step arrays (sum of T_i, ...) with offsets, so a batch of windows is one
    fancy-indexing gather.
    """

    def __init__(self, directories: str | os.PathLike | Sequence[str | os.PathLike]):
        if isinstance(directories, (str, os.PathLike)):
            directories = [directories]
        files, self.infos = [], []
        for directory in map(Path, directories):
            if not (directory / INFO_FILE).exists():
                raise OcrlError(f"{directory} is not a code cache (no {INFO_FILE})")
            self.infos.append(_read_info(directory / INFO_FILE))
            found = sorted(directory.glob("episode-*.npz"))
            if not found:
                raise OcrlError(f"code cache {directory} holds no episodes")
            files += found
        frames: dict[str, list[np.ndarray]] = {key: [] for key in CODE_KEYS}
        steps: dict[str, list[np.ndarray]] = {key: [] for key in STEP_KEYS}
        lengths = []
        for path in files:
            arrays = _load(path)
            length = len(arrays["rewards"])
            if length < 1 or any(len(arrays[key]) != length + 1 for key in CODE_KEYS):
                raise CorruptFileError(f"{path}: expected T + 1 codes for T >= 1 steps")
            lengths.append(length)
            for key in CODE_KEYS:
                frames[key].append(arrays[key])
            for key in STEP_KEYS:
                steps[key].append(arrays[key])
        self.lengths = np.asarray(lengths)
        self.frame_offsets = np.concatenate([[0], np.cumsum(self.lengths + 1)[:-1]])
        self.step_offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        self.frames = {key: torch.from_numpy(np.concatenate(value)) for key, value in frames.items()}
        self.steps = {key: torch.from_numpy(np.concatenate(value)) for key, value in steps.items()}
        # the frame each step leads to; the steps with a reward, and with an event (a reward or a termination)
        self.next_frames = np.concatenate(
            [offset + 1 + np.arange(length) for offset, length in zip(self.frame_offsets, self.lengths)]
        )
        rewarded = (self.steps["rewards"] != 0).numpy()
        self.rewarded = np.flatnonzero(rewarded)
        self.events = np.flatnonzero(rewarded | self.steps["terminated"].numpy())

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_slots(self) -> int:
        return self.frames["slots"].shape[1]

    @property
    def slot_dim(self) -> int:
        return self.frames["slots"].shape[2]

    def slot_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(D,) mean and std of slot vectors over all slots and frames."""
        slots = self.frames["slots"].flatten(0, 1).double()
        return slots.mean(0).float(), slots.std(0).float()

    def first_codes(self) -> dict[str, np.ndarray]:
        """Codes of every episode's first frame, (N, K, ...) arrays."""
        return {key: value[self.frame_offsets].numpy() for key, value in self.frames.items()}

    def windows(self, episodes: np.ndarray, starts: np.ndarray, length: int) -> Window:
        """Windows of ``length`` transitions from ``starts`` of ``episodes``; steps past an
        episode's end repeat its last frame and are marked invalid."""
        offsets = np.arange(length)
        position = starts[:, None] + offsets[None]  # (B, L)
        last = self.lengths[episodes][:, None]
        valid = position < last
        frame_index = self.frame_offsets[episodes][:, None] + np.minimum(
            np.concatenate([position, position[:, -1:] + 1], 1), last
        )
        step_index = self.step_offsets[episodes][:, None] + np.minimum(position, last - 1)
        codes = SlotCodes(**{key: value[torch.from_numpy(frame_index)] for key, value in self.frames.items()})
        step = {key: value[torch.from_numpy(step_index)] for key, value in self.steps.items()}
        return Window(
            codes,
            step["actions"],
            step["rewards"].float(),
            1.0 - step["terminated"].float(),
            torch.from_numpy(valid).float(),
        )

    def sample(
        self,
        batch_size: int,
        length: int,
        generator: np.random.Generator,
        end_fraction: float = 0.0,
        reward_fraction: float = 0.0,
    ) -> Window:
        """Random windows: episodes drawn in proportion to their length, starts uniform. So that
        rare events are seen often enough to be learned, a fraction ``end_fraction`` of the
        windows instead end with an episode's last transition (terminations), and a fraction
        ``reward_fraction`` hold a transition with a non-zero reward, drawn uniformly among them,
        at a uniform place in the window (none if the data has no reward)."""
        episodes = generator.choice(len(self), size=batch_size, p=self.lengths / self.lengths.sum())
        starts = generator.integers(0, np.maximum(1, self.lengths[episodes] - length + 1))
        kind = generator.random(batch_size)
        at_end = kind < end_fraction
        starts[at_end] = np.maximum(0, self.lengths[episodes[at_end]] - length)
        at_reward = (kind >= end_fraction) & (kind < end_fraction + reward_fraction) & (len(self.rewarded) > 0)
        if at_reward.any():
            step = self.rewarded[generator.integers(0, len(self.rewarded), size=int(at_reward.sum()))]
            chosen = np.searchsorted(self.step_offsets, step, side="right") - 1
            within = step - self.step_offsets[chosen]
            place = generator.integers(0, length, size=len(step))
            episodes[at_reward] = chosen
            starts[at_reward] = np.clip(within - place, 0, np.maximum(0, self.lengths[chosen] - length))
        return self.windows(episodes, starts, length)

    def transitions(self, batch_size: int, generator: np.random.Generator, event_fraction: float = 0.0) -> Transitions:
        """Random single transitions, a fraction ``event_fraction`` of them drawn among those with
        a reward or a termination (what the outcome head learns from; none if there are none)."""
        steps = generator.integers(0, len(self.next_frames), size=batch_size)
        at_event = (generator.random(batch_size) < event_fraction) & (len(self.events) > 0)
        if at_event.any():
            steps[at_event] = self.events[generator.integers(0, len(self.events), size=int(at_event.sum()))]
        frames = torch.from_numpy(self.next_frames[steps])
        index = torch.from_numpy(steps)
        return Transitions(
            SlotCodes(**{key: value[frames] for key, value in self.frames.items()}),
            self.steps["rewards"][index].float(),
            1.0 - self.steps["terminated"][index].float(),
        )


def _load(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in (*CODE_KEYS, *STEP_KEYS)}
    except (*PARSE_ERRORS, KeyError) as error:
        raise CorruptFileError(f"{path}: not a readable code file ({error}); delete it and encode again") from None


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        raise CorruptFileError(
            f"{path}: not a code cache's info (invalid JSON); delete the cache directory and encode again"
        )
    return info
