"""Launch scripts: shell syntax (bash -n, and shellcheck when installed) and usage errors."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("launch/*.sh"), *ROOT.glob("launch/*.sbatch"), ROOT / ".ci/run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_syntax(script):
  assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
  if shutil.which("shellcheck"):
    out = subprocess.run(["shellcheck", "-S", "warning", str(script)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.parametrize("script", ["launch/local.sh", "launch/tpu_pod.sh",
                                    "launch/slurm.sbatch"])
def test_usage_error_without_arguments(script):
  out = subprocess.run(["bash", str(ROOT / script)], capture_output=True, text=True)
  assert out.returncode == 2 and "usage:" in out.stderr
