"""Data layer: the npz shard format (docs/DESIGN.md §4) and its tools.

* :mod:`data.shards`      one shard: reading, validation (``ShardError``), ``scale_images``,
  ``write_shard``
* :mod:`data.shard_rows`  per-batch reads of uncompressed members at their byte offsets
* :mod:`data.split_summary` a split directory checked and summarised: ``inspect_split``,
  ``read_labels``, the checks across splits
* :mod:`data.stats`       band statistics for the input normalisations
* :mod:`data.rasters`     reading GeoTIFF pairs and tile grids
* :mod:`data.loader`      streaming ``make_dataset`` (tf.data on TensorFlow, PyDataset elsewhere)
* :mod:`data.synthetic`   demo data generator (``python -m data.synthetic``)
* :mod:`data.inspect`     ``python -m data.inspect DIR ...``
* :mod:`data.make_shards` shards from class folders or rasters (``python -m data.make_shards``)
* :mod:`data.splits`      random trn/val/tst split and safe writing shared by the writers
"""
