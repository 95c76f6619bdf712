"""A policy that is the same under the task's rotations and reflections (frame averaging).

In the built-in tasks the arena is a square, the agent starts at its centre, objects are
scattered uniformly and touching is a matter of distance: turning or mirroring a whole scene
turns or mirrors its solution. Those are the 8 symmetries of the square (the dihedral group D4),
acting on positions (x, y) in [-1, 1] about the centre and on the 4 moves alike. A policy that
knows it learns from every episode what it would otherwise learn from 8 different ones.

:class:`SymmetricPolicy` averages an SB3 actor-critic over the group (frame averaging): for a
state s with positions p, the logit of move a and the value are

    logit(a | s) = 1/8 sum_g logit_theta(sigma_g(a) | g s),   V(s) = 1/8 sum_g V_theta(g s),

where g s turns the positions of every object (x, y) by the matrix g and sigma_g(a) is the move
g m_a. Both are exactly invariant: logit(sigma_h(a) | h s) = logit(a | s) for every h. The set
extractor runs on the 8 turned copies of each observation (8x its compute); slot vectors,
sizes, depths and presences do not turn (a slot's appearance code describes the object, which is
the same object mirrored).
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

# the 8 symmetries of the square as 2x2 matrices acting on (x, y): 4 quarter turns, then the
# same mirrored; the identity first
_QUARTER_TURN = np.array([[0, -1], [1, 0]])
_MIRROR = np.array([[-1, 0], [0, 1]])
SQUARE_SYMMETRIES = np.stack(
    [
        np.linalg.matrix_power(_QUARTER_TURN, turns) @ mirror
        for mirror in (np.eye(2, dtype=int), _MIRROR)
        for turns in range(4)
    ]
)


def move_permutations(moves: np.ndarray) -> np.ndarray:
    """(8, A) int: row g maps move a to the move g m_a (``moves`` (A, 2), a set the group maps onto itself)."""
    moves = np.asarray(moves, dtype=np.float64)
    permutations = []
    for matrix in SQUARE_SYMMETRIES:
        turned = moves @ matrix.T
        matches = np.abs(turned[:, None, :] - moves[None, :, :]).sum(-1) < 1e-6
        if not (matches.sum(1) == 1).all():
            raise ValueError(f"the moves {moves.tolist()} are not closed under the square's rotations and reflections")
        permutations.append(matches.argmax(1))
    return np.stack(permutations)


class GroupMean(nn.Module):
    """(B * G, A) outputs of the G turned copies -> (B, A): output a of copy g is read at
    ``permutations[g, a]`` and the copies are averaged (no permutation: the plain mean)."""

    def __init__(self, permutations: np.ndarray | None, group_size: int):
        super().__init__()
        self.group_size = group_size
        index = None if permutations is None else torch.as_tensor(permutations, dtype=torch.long)
        self.register_buffer("permutations", index, persistent=False)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        outputs = outputs.reshape(-1, self.group_size, outputs.shape[-1])
        if self.permutations is not None:
            outputs = outputs.gather(2, self.permutations.expand(outputs.shape[0], -1, -1))
        return outputs.mean(dim=1)


class TurnedCopies(BaseFeaturesExtractor):
    """A features extractor run on the 8 turned copies of each observation: (B, ...) -> (B * 8, features_dim),
    copy g with every object's (x, y) in ``position`` turned by symmetry g."""

    def __init__(self, extractor: BaseFeaturesExtractor):
        super().__init__(extractor._observation_space, extractor.features_dim)
        if "position" not in extractor._observation_space.spaces:
            raise ValueError("a symmetric policy turns the objects' positions: the observation needs 'position'")
        self.extractor = extractor
        self.register_buffer("symmetries", torch.as_tensor(SQUARE_SYMMETRIES, dtype=torch.float32), persistent=False)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        features = []
        # one copy at a time: the same work, in tensors an eighth the size, which the allocator
        # reuses (on the CPU one pass over all copies at PPO's minibatch of 512 ran twice as long)
        for symmetry in self.symmetries:
            turned = dict(observations)
            position = observations["position"]
            turned["position"] = torch.cat([position[..., :2] @ symmetry.to(position.dtype).T, position[..., 2:]], -1)
            features.append(self.extractor(turned))
        return torch.stack(features, dim=1).flatten(0, 1)


class SymmetricPolicy(MultiInputActorCriticPolicy):
    """SB3's ``MultiInputPolicy`` averaged over the symmetries of the square (see the module doc).

    Args:
        moves: (A, 2) the displacement of each discrete action in the (x, y) frame of the
            observation's ``position`` (the built-in tasks' ``moves``).
        Other arguments: as ``MultiInputActorCriticPolicy``; the observation needs ``position``.
    """

    def __init__(self, observation_space, action_space, *args, moves, **kwargs):
        self.move_permutations = move_permutations(moves)
        if action_space.n != len(self.move_permutations[0]):
            raise ValueError(f"{len(self.move_permutations[0])} moves for {action_space.n} actions")
        super().__init__(observation_space, action_space, *args, **kwargs)

    def make_features_extractor(self) -> BaseFeaturesExtractor:
        return TurnedCopies(super().make_features_extractor())

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        group_size = len(SQUARE_SYMMETRIES)
        # the pools hold no parameters, so the optimizer built above still holds them all
        self.action_net = nn.Sequential(self.action_net, GroupMean(self.move_permutations, group_size))
        self.value_net = nn.Sequential(self.value_net, GroupMean(None, group_size))
