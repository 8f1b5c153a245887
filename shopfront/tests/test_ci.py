"""CI cannot pass by skipping: `.ci/run` sets CI=true, and under it a skipped test fails."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

from test_readme import ROOT


def test_ci_run_sets_ci_before_any_test_runs() -> None:
    """`.ci/run` exports CI=true unconditionally, before its pytest and schemathesis lines."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    exported = lines.index("export CI=true")
    tests = next(i for i, line in enumerate(lines) if "uv run pytest" in line)
    assert exported < tests
    assert not any(line.startswith(("unset CI", "export CI=")) for line in lines[exported + 1 :])


def test_a_skipped_test_fails_the_run_under_ci(tmp_path: Path) -> None:
    """With CI=true the project's conftest turns a skip (a service missing, say) into a failure."""
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n\ndef test_needs_a_service():\n    pytest.skip('Redis not reachable')\n"
    )
    run = [sys.executable, "-m", "pytest", "-p", "conftest", "-q", "-c", os.devnull]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    in_ci = subprocess.run(
        [*run, str(tmp_path)],
        env={**env, "CI": "true"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert in_ci.returncode == 1, in_ci.stdout
    assert "skipped in CI (CI=true), which counts as a failure" in in_ci.stdout
    local = subprocess.run(
        [*run, str(tmp_path)], env={**env, "CI": ""}, capture_output=True, text=True, check=False
    )
    assert local.returncode == 0, local.stdout
    assert "1 skipped" in local.stdout
