"""Kept for old command lines: one parameter count, qpeft.params (qpeft-params count <overrides>)."""

import sys

from qpeft.params import main

if __name__ == "__main__":
    sys.exit(main(["count", *sys.argv[1:]]))
