"""``python -m ffsplat.baselines run/compare`` error contract (issue 13): a table of bad inputs, each ->
exit code 2, one ``error:`` line naming the option/file, nothing written; ``run`` shows a progress
bar; the default ``--split`` is ``val`` like evaluate.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffsplat.baselines.__main__ import main as baselines_main
from tests.test_baseline_compare import setup  # noqa: F401  (fixture)


def args_for(command: str, shards: Path, slim: Path, index: Path, out: Path) -> list:
    extra = (
        ["--method", "3dgs", "--out", out / "r.json"]
        if command == "run"
        else ["--methods", "3dgs", "--settings", "sparse", "--out", out]
    )
    return [command, "--checkpoint", slim, "--shards", shards, "--split", "val", "--index", index, "--iterations", "2",
            "--prompt-grid", "2", "--init-points", "500", *extra]  # fmt: skip


def replace(args: list, option: str, value) -> list:
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def bad_case(kind: str, args: list, tmp: Path, index: Path) -> tuple[list, str]:
    if kind == "missing_shards":
        return replace(args, "--shards", tmp / "nope"), "shard folder not found"
    if kind == "wrong_split":
        return replace(args, "--split", "test"), "no split 'test'"
    if kind in ("missing_scene", "missing_frames", "malformed_index"):
        data = json.loads(index.read_text())
        scene = next(iter(data))
        if kind == "missing_scene":
            data["ghost_scene"] = data[scene]
        elif kind == "missing_frames":
            data[scene][0]["target"] = [9999]
        bad = tmp / "bad.json"
        bad.write_text("[1, 2" if kind == "malformed_index" else json.dumps(data))
        return replace(args, "--index", bad), {"missing_scene": "ghost_scene", "missing_frames": "not keyframes",
                                               "malformed_index": "--index"}[kind]  # fmt: skip
    if kind == "missing_index":
        return replace(args, "--index", tmp / "none.json"), "--index: evaluation index not found"
    if kind == "missing_checkpoint":
        return replace(args, "--checkpoint", tmp / "none.pt"), "--checkpoint: checkpoint not found"
    if kind == "scene_config_typo":
        (tmp / "scene.yaml").write_text("iteratons: 5\n")
        return args + ["--scene-config", tmp / "scene.yaml"], "--scene-config"
    if kind == "missing_scene_config":
        return args + ["--scene-config", tmp / "none.yaml"], "--scene-config"
    if kind == "iterations_0":
        return replace(args, "--iterations", 0), "--iterations"
    if kind == "device":
        return args + ["--device", "tpu"], "--device"
    if kind == "unknown_method":
        return replace(args, "--method", "nerf") if "--method" in args else replace(
            args, "--methods", "nerf"
        ), "invalid choice"
    raise AssertionError(kind)


CASES = ["missing_shards", "wrong_split", "missing_scene", "missing_frames", "malformed_index", "missing_index", "missing_checkpoint",
         "scene_config_typo", "missing_scene_config", "iterations_0", "device", "unknown_method"]  # fmt: skip


@pytest.mark.parametrize("command", ["run", "compare"])
@pytest.mark.parametrize("kind", CASES)
def test_bad_input_gives_one_error_line_and_writes_nothing(tiny_shards, setup, tmp_path, capsys, command, kind):  # noqa: F811
    slim, _, tmp = setup
    out = tmp_path / "out"
    args, message = bad_case(
        kind, args_for(command, tiny_shards, slim, tmp / "index.json", out), tmp_path, tmp / "index.json"
    )
    with pytest.raises(SystemExit) if kind == "unknown_method" else _nothing() as raised:
        code = baselines_main([str(a) for a in args])
    if kind == "unknown_method":
        code = raised.value.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_run_shows_progress_and_defaults_to_the_val_split(tiny_shards, setup, tmp_path, capsys):  # noqa: F811
    slim, _, tmp = setup
    args = args_for("run", tiny_shards, slim, tmp / "index.json", tmp_path)
    args.remove("--split")
    args.remove("val")
    code = baselines_main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "3dgs: 100%" in captured.err and "2/2" in captured.err  # tqdm's bar for the scene fit
    assert json.loads((tmp_path / "r.json").read_text())["examples"] == 1
