"""Kept for old command lines: the circuit timing lives in qpeft.circuit_cost."""

import sys

from qpeft.circuit_cost import main

if __name__ == "__main__":
    sys.exit(main())
