"""``python -m basemount_py.emulator --data ACCOUNT_DIR ...`` (same options as ``basemount-py serve``)."""

import argparse
import sys

from .cli import add_arguments, main


def run() -> int:
    parser = argparse.ArgumentParser(prog="python -m basemount_py.emulator", description="BaseSpace API emulator")
    add_arguments(parser)
    return main(parser.parse_args())


if __name__ == "__main__":
    sys.exit(run())
