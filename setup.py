"""Build hook: a wheel carries what the console scripts need beyond the ``ffsplat`` package.

``pip install .`` (not editable) copies into the built package ``ffsplat/_configs/`` (``configs/``)
and ``ffsplat/_demo/model.pt`` (``checkpoints/demo/model.pt``); the console scripts themselves are
library code (``ffsplat/cli.py``). ``ffsplat.core.config.resource_path``
finds them there, and falls back to the checkout for editable installs. Everything else is in
``pyproject.toml``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithResources(build_py):
    def run(self):
        super().run()
        package = Path(self.build_lib) / "ffsplat"
        shutil.copytree(HERE / "configs", package / "_configs", dirs_exist_ok=True)
        demo = HERE / "checkpoints" / "demo" / "model.pt"
        if demo.is_file():
            (package / "_demo").mkdir(exist_ok=True)
            shutil.copy2(demo, package / "_demo" / "model.pt")


setup(cmdclass={"build_py": BuildWithResources})
