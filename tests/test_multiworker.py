"""Two study workers on PostgreSQL and an MLflow server: ``make multiworker`` end to end.

The script installs PostgreSQL (root, apt) and starts servers, so it runs only when asked:
``GPT2FT_MULTIWORKER=1 pytest tests/test_multiworker.py`` (CI runs ``make multiworker``
itself). It takes about 4-5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "multiworker.sh"

pytestmark = pytest.mark.skipif(os.environ.get("GPT2FT_MULTIWORKER") != "1",
                                reason="set GPT2FT_MULTIWORKER=1 to run scripts/multiworker.sh "
                                       "(PostgreSQL + MLflow server + two workers, ~5 min)")


@pytest.mark.slow
def test_two_workers_share_one_study():
    env = dict(os.environ)
    if (Path(sys.prefix) / "bin" / "gpt2ft").exists():  # the venv running this test
        env["VENV"] = sys.prefix
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "check: PASS" in out, out[-6000:]
    assert "[FAIL]" not in out
