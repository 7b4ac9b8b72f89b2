"""A test-only layer: one function's containers see a clock running ahead of the real one.

`tests/e2e/test_fault_tolerance.py` puts this folder on the functions' path so the re-drive job
runs "as if its schedule fired minutes later" (imports parked for a broken connection wait
5 minutes) without the test waiting for it. Only the container of the function named by
`E2E_CLOCK_WARP_FUNCTION` is affected; every other container keeps the real clock.
"""

from __future__ import annotations

import os
import time


def _warp() -> None:
    function = os.environ.get("E2E_CLOCK_WARP_FUNCTION")
    if not function or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") != function:
        return
    offset = float(os.environ.get("E2E_CLOCK_WARP_SECONDS") or 0)
    real = time.time

    def warped() -> float:
        return real() + offset

    time.time = warped


_warp()
