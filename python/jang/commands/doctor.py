"""`jang doctor`."""

import argparse

HELP = "report MLX, backend, extension, metallib and CPU SIMD level"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from jang import doctor

    return doctor.run()
