"""Kept for old command lines: the parameter table, qpeft.params (qpeft-params table)."""

import sys

from qpeft.params import main

if __name__ == "__main__":
    sys.exit(main(["table", *sys.argv[1:]]))
