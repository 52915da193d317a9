"""tests/gpu/check.py on a host without a GPU (CI's): it must stop at once and say why.

The real check needs a real NVIDIA GPU; here there is none, and none is simulated:
this only shows that the command refuses clearly instead of hanging or half-running.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_check_refuses_clearly_without_nvidia_device_nodes(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests/gpu/check.py"), "--dev-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"no NVIDIA device nodes ({tmp_path}/nvidia[0-9]*) on this host" in r.stdout
    assert r.stdout.rstrip().endswith("RESULT: FAILED")
