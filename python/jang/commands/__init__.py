"""Subcommands of `jang`, one module each.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit code); ``DESCRIPTION`` is optional. `jang.cli`
imports every command module to build its parser, so keep heavy imports
(mlx, numpy, model code) inside ``run``.
"""
