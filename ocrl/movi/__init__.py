"""MOVi: Kubric's multi-object videos, read without TensorFlow, converted to rollout stores.

* :func:`ocrl.movi.schema.read_movi` reads the MOVi TFDS shards (the feature schema is in
  :mod:`ocrl.movi.schema`; TFRecord and ``tf.train.Example`` in :mod:`ocrl.movi.tfrecord`, PNG in
  :mod:`ocrl.movi.png`);
* :func:`ocrl.movi.convert.convert_movi` turns them into a rollout store (``ocrl movi convert``);
* :mod:`ocrl.movi.generator` renders MOVi-style videos with MuJoCo (``ocrl movi generate``).

Nothing is imported here, so that importing one part does not load the others.
"""
