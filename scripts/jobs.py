"""Kept for old command lines: the sweep listing lives in qpeft.jobs (qpeft-jobs)."""

import sys

from qpeft.jobs import main

if __name__ == "__main__":
    sys.exit(main())
