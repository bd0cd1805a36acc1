"""A run's peak memory is its own, not the sweep process's lifetime peak."""

import sys

import numpy as np
import pytest

from qpeft.provenance import peak_memory, reset_peak_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-run CPU peak needs /proc (Linux)")
def test_peak_memory_restarts_with_each_run():
    reset_peak_memory()
    big = np.ones(400 * 2**20 // 8)  # 400 MiB, every page touched
    first, kind = peak_memory()
    del big
    reset_peak_memory()  # the next run in the same process
    second, _ = peak_memory()
    assert kind == "cpu_peak_rss"
    assert first - second > 300 * 2**20, (first, second)
