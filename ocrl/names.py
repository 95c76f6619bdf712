"""The names the library's registries are keyed by, in a module that imports nothing, so that the
``ocrl`` command offers them as argument choices without loading torch (``ocrl --help`` stays
fast). The checks of the kinds read these tuples; the registries that map a name to a class or a
preset are keyed by them, which ``tests/test_cli.py`` checks.
"""

# ocrl.perception.config.FAMILIES: the slot-attention families of perception_config
PERCEPTION_FAMILIES = ("slot_attention", "tf_inv", "smoothsa")
# the keys of ocrl.training.PRESETS and of ocrl.perception.loci.training.LOCI_PRESETS
TRAINING_PRESETS = ("quick", "base", "movi-c", "movi-e")
# the keys of ocrl.agents.training.ALGORITHMS
AGENT_ALGORITHMS = ("ppo", "sac", "dqn")
# ocrl.agents.training.OBSERVATIONS: what an agent observes
AGENT_OBSERVATIONS = ("slots", "pixels", "ground_truth")
# ocrl.agents.extractors.KINDS: how SlotSetExtractor pools a set of slots
EXTRACTOR_KINDS = ("context", "relation", "transformer", "deepsets")
