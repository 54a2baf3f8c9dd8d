"""A non-editable ``pip install .`` gives working console scripts that find the bundled configs and
demo checkpoint, away from the checkout (offline: --no-deps --no-build-isolation --no-index; the
dependencies come from this interpreter's site-packages through a .pth file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "pyproject.toml",
    "setup.py",
    "README.md",
    "infer.py",
    "evaluate.py",
    "train.py",
    "ffsplat",
    "configs",
    "checkpoints/demo",
]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in SOURCES:
        if not (ROOT / name).exists():
            pytest.skip(f"{name} missing from the checkout")
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, dict(os.environ)
    ).stdout.strip()
    Path(purelib, "_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, pip, setuptools, ...
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--ignore-installed",
            str(src),
        ],
        tmp,
        env,
    )
    shutil.rmtree(src)  # the installed copy must not lean on the sources
    return env_dir, env


@pytest.mark.slow
def test_console_scripts_work_from_a_non_editable_install(venv, tmp_path):
    env_dir, env = venv
    where = run(
        [
            str(env_dir / "bin" / "python"),
            "-c",
            "import ffsplat, ffsplat.core.config as c; print(ffsplat.__file__); print(c.CONFIG_DIR); print(c.DEMO_CHECKPOINT)",
        ],
        tmp_path,
        env,
    )
    module, configs, demo = where.stdout.split()
    assert str(env_dir) in module and configs.endswith("ffsplat/_configs") and demo.endswith("ffsplat/_demo/model.pt")
    for script in ("ffsplat-infer", "ffsplat-eval", "ffsplat-view"):
        assert "usage:" in run([str(env_dir / "bin" / script), "--help"], tmp_path, env).stdout
    assert (
        "experiment" in run([str(env_dir / "bin" / "ffsplat-train"), "--help"], tmp_path, env).stdout
    )  # Hydra found the bundled configs
    demo_views = ROOT / "examples" / "demo"
    out = tmp_path / "out" / "scene.ply"
    run([str(env_dir / "bin" / "ffsplat-infer"), "--views", str(demo_views / "view_0.png"), str(demo_views / "view_1.png"),
         "--cameras", str(demo_views / "cameras.json"), "--out", str(out), "--device", "cpu"], tmp_path, env)  # fmt: skip
    assert out.is_file() and out.with_suffix(".json").is_file()
