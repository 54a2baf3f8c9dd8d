"""The docs as tests (issue 29): every config key that a doc or an error message names is a valid
``train.py`` override, and the docs' training recipes run verbatim (commands taken from the fenced
blocks, only size/step overrides appended) at a tiny size on CPU."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SECTIONS = "model|data|teachers|stage|optim|loss|logging|checkpoint|trainer"
KEY = re.compile(rf"(?<![\w./-])((?:{SECTIONS})(?:\.[a-z_][a-z0-9_]*)+)")
MESSAGE_CALLS = {"print", "warn", "rank_zero_warn", "rank_zero_info", "warning", "info", "error", "InputError",
                 "require_file", "require_dir", "check_input_file", "check_input_dir", "check_number"}  # fmt: skip
NOT_KEYS = (".pt", ".py", ".json", ".yaml", ".ckpt")
CONTEXTS = ([], ["teacher=real"], ["teacher=espnetv2"], ["experiment=scannet_geometry"], ["model=paper"])


def doc_keys() -> set[str]:
    """Config keys named in backticks or as ``key=value`` in the README and docs/."""
    keys = set()
    for path in DOCS:
        text = path.read_text()
        keys |= {k for k in re.findall(rf"`((?:{SECTIONS})\.[a-z_][a-z0-9_.]*)", text)}
        keys |= set(re.findall(rf"(?<![\w./-])((?:{SECTIONS})(?:\.[a-z_][a-z0-9_]*)+)=", text))
    return {k.rstrip(".") for k in keys if not k.endswith(NOT_KEYS)}


def message_keys() -> set[str]:
    """Config keys in the string constants of raise statements and message calls under ffsplat/
    (not the per-scene baselines, whose options are their own)."""
    from ffsplat.objectives.losses import LPIPS_VGG_KEY
    from ffsplat.teachers.clip_text import CLIP_KEY
    from ffsplat.teachers.lseg import CHECKPOINT_KEY

    keys = {LPIPS_VGG_KEY, CLIP_KEY, CHECKPOINT_KEY}
    for path in (ROOT / "ffsplat").rglob("*.py"):
        if "baselines" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = (
                isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in MESSAGE_CALLS
            )
            if isinstance(node, ast.Raise) or call:
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        keys |= set(KEY.findall(sub.value))
    return {k for k in keys if not k.endswith(NOT_KEYS)}


def invalid_keys(keys: set[str]) -> list[str]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ffsplat.core.config import CONFIG_DIR

    missing = object()
    bad = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        configs = [(ctx, compose("train", overrides=ctx)) for ctx in CONTEXTS]
        for key in sorted(keys):
            # Hydra accepts an override of a key the composed config has, and refuses any other (no "+")
            if all(OmegaConf.select(cfg, key, default=missing) is missing for _, cfg in configs):
                bad.append(key)
        compose("train", overrides=[*CONTEXTS[1], "teachers.segmentation.kwargs.checkpoint=x.pth"])  # e.g.
        with pytest.raises(Exception, match="sam"):
            compose("train", overrides=[*CONTEXTS[1], "teachers.sam.checkpoint=x.pth"])  # the key docs used to name
    return bad


def test_every_key_named_in_the_docs_is_a_valid_override():
    keys = doc_keys()
    assert {
        "teachers.segmentation.kwargs.checkpoint",
        "checkpoint.allow_config_change",
        "model.pretrained.path",
    } <= keys
    assert invalid_keys(keys) == []


def test_every_key_named_in_an_error_message_is_a_valid_override():
    keys = message_keys()
    assert {
        "teachers.segmentation.kwargs.model_type",
        "teachers.language.kwargs.checkpoint",
        "teachers.clip_path",
    } <= keys
    assert invalid_keys(keys) == []


def doc_commands(path: Path) -> list[str]:
    """The commands of the fenced ``bash`` blocks of ``path``, line continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        commands += [
            " ".join(line.split("  #")[0].split())
            for line in text.splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return commands


# Appended to each documented command: tiny sizes and step counts only -- and, for training, the ESPNetv2
# teachers (published weights, ../shared/weights) computed online instead of SAM/LSeg (ViT-B at 1024 px and
# ViT-L: seconds per frame and gigabytes of weights on CPU). The MVSplat file is a random state dict in
# MVSplat's released layout.
APPEND = {
    "export_sens.py": "--workers 1",
    "make_shards.py": "--size 64 --workers 1 --clip-length 8 --keyframe-translation 0",
    "make_eval_index.py": "--lsm-frames 8",
    "train.py": "trainer=cpu teacher=espnetv2 teachers.source=online teachers.segmentation.kwargs.checkpoint={espnetv2} "
    "teachers.language.kwargs.checkpoint={espnetv2} optim.max_steps=1 optim.warmup_steps=1 "
    "data.batch_size=1 data.num_workers=0 data.epoch_length=2 data.val_examples=1 data.shuffle_buffer=2 "
    "data.sampler.num_target=1 data.sampler.min_gap=2 data.sampler.max_gap=4 data.sampler.gap_warmup_steps=0 "
    "logging.wandb_mode=disabled logging.images_every_n_steps=0 loss.num_prompts=2 trainer.val_every_n_steps=0",
    "evaluate.py": "--max-examples 1 --prompt-grid 4 --figures 1 --class-mapping pascal-scannet",  # ESPNetv2: PASCAL classes
    "infer.py": "--device cpu",
}


def mvsplat_random_checkpoint(path: Path) -> None:
    """MVSplat's released layout (``{"state_dict": {"encoder.*": ...}}``, the official key list and shapes)."""
    import json

    import torch

    keys = json.loads((ROOT / "tests" / "fixtures" / "mvsplat_re10k_encoder_keys.json").read_text())["keys"]
    torch.manual_seed(0)
    state = {k: torch.randn(*shape) * 0.02 for k, shape in keys.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 0}, path)


@pytest.mark.slow
def test_the_scannet_recipe_runs_verbatim(tmp_path):
    """docs/training.md, commands as written: .sens files -> export -> shards -> evaluation index ->
    geometry (from MVSplat weights) -> seg -> lang -> evaluate -> infer, in a fresh folder."""
    import os
    import shutil
    import subprocess
    import sys

    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene
    from tests.conftest import shared_data

    tsv = shared_data("scannet/scannetv2-labels.combined.tsv")
    espnetv2 = ROOT.parent / "shared" / "weights" / "espnetv2-pascal" / "espnetv2_s_2.0_pascal_256x256.pth"
    if not espnetv2.is_file():
        pytest.skip(f"ESPNetv2 weights not found at {espnetv2}")
    commands = doc_commands(ROOT / "docs" / "training.md")
    assert [c.split()[1] for c in commands] == ["data_prep/export_sens.py", "data_prep/make_shards.py",
                                                "data_prep/make_eval_index.py", "train.py", "train.py", "train.py",
                                                "evaluate.py", "infer.py"]  # fmt: skip
    scenes = {"scene0000_00": "train", "scene0001_00": "train", "scene0707_00": "val"}
    synth = tmp_path / "synthetic"
    for seed, name in enumerate(scenes):
        write_synthetic_scene(synth / name, seed, SyntheticConfig(height=64, width=64, frames=16), sens=True)
        (tmp_path / "scans" / name).mkdir(parents=True)
        shutil.copy(synth / name / f"{name}.sens", tmp_path / "scans" / name / f"{name}.sens")
    for split in ("train", "val"):
        names = [n for n, s in scenes.items() if s == split]
        (tmp_path / f"scannetv2_{split}.txt").write_text("\n".join(names) + "\n")
    shutil.copy(tsv, tmp_path / "scannetv2-labels.combined.tsv")
    mvsplat_random_checkpoint(tmp_path / "checkpoints" / "mvsplat" / "re10k.ckpt")
    for name in ("data_prep", "train.py", "evaluate.py", "infer.py"):
        os.symlink(ROOT / name, tmp_path / name)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for command in commands:
        script = command.split()[1]
        if script == "data_prep/make_shards.py":  # ScanNet ships the 2D labels apart from the .sens (unzipped here)
            for name in scenes:
                for folder in ("label-filt", "instance-filt"):
                    shutil.copytree(synth / name / folder, tmp_path / "scannet_exported" / name / folder)
        line = (
            command.replace("python ", f"{sys.executable} ", 1)
            + " "
            + APPEND[Path(script).name].format(espnetv2=espnetv2)
        )
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-3000:])
        if "stage.init_from=" in command:  # a chained stage says what it loaded (console, via the CLI)
            init_from = command.split("stage.init_from=")[1].split()[0]
            assert f"[init] loaded {init_from}" in done.stdout + done.stderr, done.stderr[-3000:]
    for run in ("scannet_geometry", "scannet_seg", "scannet_lang"):
        assert (tmp_path / "checkpoints" / run / "model.pt").is_file()
    report = (tmp_path / "reports" / "scannet_lsm" / "report.md").read_text()
    assert "| model |" in report and "teacher_2d" in report
    assert (tmp_path / "outputs" / "scene0707_00.ply").is_file()


def readme_scannet_commands() -> list[str]:
    """The ScanNet commands of the README and the docs pages other than the recipe itself."""
    pages = [d for d in DOCS if d.name != "training.md"]
    return [c for page in pages for c in doc_commands(page) if "scannet" in c]


def test_readme_and_docs_agree_on_the_scannet_recipe_and_its_paths():
    import yaml

    docs = doc_commands(ROOT / "docs" / "training.md")
    readme = readme_scannet_commands()
    train = [c for c in docs if c.startswith("python train.py")]
    assert [c for c in readme if c.startswith("python train.py")] == train  # the same three stages
    root = yaml.safe_load((ROOT / "configs" / "data" / "scannet.yaml").read_text())["root"]
    paths = {m for c in readme + docs for m in re.findall(r"--(?:out|shards) (\S*shards/scannet\S*)", c)}
    assert paths == {root}, paths  # export -> shards -> index -> evaluate all use data.root's folder
    index = {m for c in readme + docs for m in re.findall(r"--(?:out|index) (index/scannet\S*)", c)}
    assert index == {"index/scannet_lsm.json"}, index


def test_the_scannet_stages_agree_on_model_and_teachers_and_read_what_they_get():
    """Each stage of the recipe (as the docs write it) has the same model and teachers (stage.init_from
    needs the model; the paper model is conditioned on both teachers in every stage), and those
    teachers are computed online, since the documented data command caches none."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ffsplat.core.config import CONFIG_DIR

    train = [c.split()[2:] for c in doc_commands(ROOT / "docs" / "training.md") if c.startswith("python train.py")]
    shards = next(c for c in doc_commands(ROOT / "docs" / "training.md") if "make_shards.py" in c)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfgs = [compose("train", overrides=o) for o in train]
    assert [c.stage.name for c in cfgs] == ["geometry", "seg", "lang"]
    models = [OmegaConf.to_container(c.model) for c in cfgs]
    for m in models:
        m.pop("pretrained")  # MVSplat's file for the first stage; init_from after it
    assert models[0] == models[1] == models[2]
    assert cfgs[0].model.conditioning.use_seg_teacher and cfgs[0].model.conditioning.use_lang_teacher
    teachers = [OmegaConf.to_container(c.teachers) for c in cfgs]
    assert teachers[0] == teachers[1] == teachers[2]
    assert teachers[0]["source"] == "online" and "--teacher" not in shards


def test_make_shards_help_names_every_feature_teacher_and_outputs_are_ignored():
    """``make_shards.py --help`` (its ``--teacher`` help, read from the source: importing the script
    costs seconds) names every built-in feature teacher; the docs' output folders are git-ignored."""
    tree = ast.parse((ROOT / "data_prep" / "make_shards.py").read_text())
    helps = [
        "".join(k.value.value for k in [kw] if isinstance(k.value, ast.Constant))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and node.args and getattr(node.args[0], "value", None) == "--teacher"
        for kw in node.keywords
        if kw.arg == "help"
    ]
    assert len(helps) == 1
    for name in ("sam", "lseg", "espnetv2", "espnetv2_seg", "label_seg", "label_lang"):  # BUILTIN_TEACHER_MODULES
        assert re.search(rf"\b{name}\b", helps[0]), (name, helps[0])
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"/index/", "/reports/", "/data/", "outputs/"} <= set(ignored)
