"""Kept for old command lines: the benchmark lives in qpeft.bench (qpeft-bench)."""

from qpeft.bench import cli

if __name__ == "__main__":
    cli()
