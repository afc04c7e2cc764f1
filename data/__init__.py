"""Data layer: the npz shard format (docs/DESIGN.md §4) and its tools.

* :mod:`data.shards`      reading, validation (``ShardError``), ``inspect_split``, ``read_labels``,
  ``scale_images``, ``write_shard``
* :mod:`data.loader`      streaming ``make_dataset`` (tf.data on TensorFlow, PyDataset elsewhere)
* :mod:`data.synthetic`   demo data generator (``python -m data.synthetic``)
* :mod:`data.inspect`     ``python -m data.inspect DIR ...``
* :mod:`data.make_shards` shards from class folders or rasters (``python -m data.make_shards``)
* :mod:`data.splits`      random trn/val/tst split and safe writing shared by the writers
"""
