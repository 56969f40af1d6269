"""Command modules that belong to no single layer: each provides ``add_arguments(parser)`` and ``run(args)``."""
