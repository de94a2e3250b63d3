"""The ``seg-perception`` commands: one module per command, each with ``add_arguments(parser)``
and ``run(args)`` (listed in :mod:`seg_perception.cli`)."""
