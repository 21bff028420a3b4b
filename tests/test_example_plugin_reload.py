"""``examples/plugin_reload.py`` runs end to end: a live reload serves the new version and a
broken save is refused while the running version keeps answering every request."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_the_plugin_reload_example_shows_a_live_reload_and_a_rollback() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plugin_reload.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "greeter 1.0.0: hello, ada (from 1.0.0)" in out
    assert re.search(r"1\.1\.0 answers \d+\.\d+ s after the save", out)
    assert "greeter 1.1.0: hi, ada (from 1.1.0)" in out
    assert re.search(r"plugin_failed: .*greeter: entry_point: syntax error in greeter\.py, "
                     r"line \d+: .*; the running version keeps serving", out)  # fmt: skip
    assert "still serving: greeter 1.1.0" in out
    answered = re.search(r"(\d+) requests answered .*\((\d+) by 1\.0\.0, (\d+) by 1\.1\.0\), "
                         r"0 failed", out)  # fmt: skip
    assert answered, out
    assert int(answered[2]) > 0
    assert int(answered[3]) > 0
    assert "Traceback" not in result.stderr
