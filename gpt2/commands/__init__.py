"""The commands of ``python -m gpt2``: one module each, with ``add_arguments(parser)`` and ``run(args)``."""
