"""qpeft: a benchmark harness for Quantum-PEFT and its baselines."""

__version__ = "0.1.0"
