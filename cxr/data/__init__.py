"""From image folders to training batches: scan, check, manifest, split, shards, tf.data, demo data."""
