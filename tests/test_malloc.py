"""On Linux (glibc) freed MLX buffers are kept for reuse instead of being page-faulted in anew."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the mallopt tuning is Linux/glibc-only")

# 30 rounds of a 64 MiB temporary: glibc's defaults mmap and unmap it every round (16k faults each)
CODE = """
import resource
import reptile_fn, mlx.core as mx
from reptile_fn import _malloc
x = mx.ones((1 << 24,))
mx.eval(x * 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):
    mx.eval((x * i).sum())
print(_malloc.status(), "|", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True).stdout.strip()
    status, faults = out.rsplit("|", 1)
    return status.strip(), int(faults)


def test_freed_buffers_are_reused_and_the_opt_out_restores_glibc_defaults():
    tuned_status, tuned = run()
    default_status, default = run(REPTILE_FN_NO_MALLOC_TUNING="1")
    assert tuned_status.startswith("glibc, freed memory kept")
    assert "disabled by REPTILE_FN_NO_MALLOC_TUNING" in default_status
    # 30 × 16,384 pages of 4 KiB would be faulted in by mmap-per-allocation; reuse faults (almost) none
    assert default > 30 * 8192, default
    assert tuned < default / 20, (tuned, default)
