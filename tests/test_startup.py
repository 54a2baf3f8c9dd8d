"""The inference path starts fast: it imports neither torchvision nor ``torch._dynamo`` (issue 33, part 5)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_inference_cli_imports_no_torchvision_and_the_shim_still_arms_itself():
    code = (
        "import sys, ffsplat.inference.cli;"
        "from ffsplat import _torchvision_cpu as shim;"
        "heavy = [m for m in ('torchvision', 'torch._dynamo', 'lightning', 'timm') if m in sys.modules];"
        "print(heavy, shim._FINDER in sys.meta_path)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True"
