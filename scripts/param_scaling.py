"""Kept for old command lines: the scaling figure, qpeft.params (qpeft-params scaling)."""

import sys

from qpeft.params import main

if __name__ == "__main__":
    sys.exit(main(["scaling", *sys.argv[1:]]))
