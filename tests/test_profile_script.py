"""scripts/profile_triton_linear.py: a bad --maps value is a one-line error before any GPU is needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_feature_map_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile_triton_linear.py"), "--maps", "favor,relu"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "error: unknown feature map 'relu' in --maps: choose from favor, elu, cos"
