"""The host side (sweeps/, analysis/) type-checks with the mypy configuration in pyproject.toml."""
import subprocess
import sys

from conftest import ROOT


def test_mypy_is_clean():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
