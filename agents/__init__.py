"""SB3 agents on slot codes: a permutation-invariant features extractor, the ground-truth
oracle, and training/evaluation (``ocrl train-agent`` / ``ocrl eval-agent``)."""

from ocrl.agents.extractors import SlotSetExtractor
from ocrl.agents.ground_truth import GroundTruthObservation
from ocrl.agents.symmetric import SymmetricPolicy
from ocrl.agents.training import AgentConfig, evaluate_policy_in_env, load_agent, make_vec_env, train_agent

__all__ = [
    "AgentConfig",
    "GroundTruthObservation",
    "SlotSetExtractor",
    "SymmetricPolicy",
    "evaluate_policy_in_env",
    "load_agent",
    "make_vec_env",
    "train_agent",
]
