"""The serving process keeps the memory it frees (``seqstate.serve.allocator``).

Each check runs in a fresh interpreter: the thresholds are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the thresholds are glibc's",
)

# Minor page faults of 20 rounds of four 2 MiB arrays made, written and dropped (after three
# rounds of warm-up): the pattern of a served batch's decoded and encoded rows. With glibc's
# defaults the freed heap top passes the trim threshold and goes back to the OS, so every
# round faults its pages in again (about 4 x 512 a round).
_SCRIPT = textwrap.dedent(
    """
    import json, resource
    import numpy as np
    from seqstate.serve.allocator import keep_freed_memory

    def faults():
        for _ in range(3):
            arrays = [np.ones(1 << 18) for _ in range(4)]
            del arrays
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            arrays = [np.ones(1 << 18) for _ in range(4)]
            del arrays
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = faults()
    applied = keep_freed_memory()
    print(json.dumps({"default": default, "applied": applied, "tuned": faults()}))
    """
)


def _run(extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_freed_blocks_are_reused_without_page_faults() -> None:
    result = _run({})
    assert result["applied"] is True
    # glibc's defaults fault the pages in again every round: the effect the setting removes
    assert result["default"] > 20 * 4 * 256
    assert result["tuned"] < 20 * 4 * 16


def test_an_operators_own_malloc_settings_are_left_alone() -> None:
    result = _run({"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert result["applied"] is False
    assert result["tuned"] > 20 * 4 * 256  # still glibc's behaviour with its trim threshold
