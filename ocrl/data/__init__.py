"""Rollout datasets: collect episodes from any env, store them on disk, read them for torch.

* :func:`ocrl.data.collect.collect` fills a store (``ocrl collect`` on the command line);
* :mod:`ocrl.data.store` documents the format: :class:`~ocrl.data.store.RolloutStore` reads it;
* :class:`ocrl.data.dataset.ClipDataset` / :class:`~ocrl.data.dataset.FrameDataset` serve
  clips and frames to a DataLoader;
* :func:`ocrl.data.sb3_policy.load_sb3_policy` acts with a saved Stable-Baselines3 policy
  without unpickling it.
* MOVi (Kubric shards, their conversion to a store, a MuJoCo generator) lives in :mod:`ocrl.movi`.

Nothing is imported here, so that the CLI's ``collect`` does not wait for torch to load.
"""
