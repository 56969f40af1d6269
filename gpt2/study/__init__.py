"""The attention study: a controlled, multi-seed comparison of attention kinds and position encodings."""
