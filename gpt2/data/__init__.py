"""Data: Wikipedia dump → text shards → token files → batches."""
