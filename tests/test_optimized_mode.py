"""`make test` also runs the lifecycle tests under `python -O`, where Python drops assert statements.

pytest rewrites the asserts of test modules into plain `if not ...: raise`, so they still fail
a test under -O; this proves it on a deliberately failing test, run the way `make test` runs it.
"""

from __future__ import annotations

import subprocess
import sys


def test_a_failing_assert_still_fails_a_test_under_python_O(tmp_path) -> None:
    (tmp_path / "test_deliberately_failing.py").write_text(
        "def helper(x):\n    return x + 1\n\n\ndef test_fails():\n    assert helper(1) == 3\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib", "."],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "assert 2 == 3" in result.stdout
