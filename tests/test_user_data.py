"""Nothing of the user's is ever deleted or overwritten (issue 28): a failed run removes only what it
created itself; an output path that is an existing folder, or that is (or holds) an input, is refused
before any work; a full disk leaves every earlier output exactly as it was; a damaged ``last.ckpt`` is
moved aside and training keeps writing ``last.ckpt``; temporary files of killed runs are cleaned up.

Every case runs the real command on real files in a temporary folder and compares a byte snapshot of
the folder before and after."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import infer
from data_prep import make_eval_index, make_shards
from ffsplat.core.atomic import atomic_open, is_stale_temp, make_dirs, transaction
from ffsplat.core.errors import InputError, check_outputs
from tests.test_evaluation import setup  # noqa: F401  (fixture)
from tests.test_infer import checkpoint, inputs, room_views  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``folder``, hidden ones included."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(Path(folder).rglob("*"))
    }


def contract(code: int, err: str, message: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err


@pytest.fixture
def full_disk_after(monkeypatch):
    """``full_disk_after(n)``: the (n+1)-th fsync from now on fails with ENOSPC, like a disk filling up."""

    def arm(n: int):
        real = os.fsync
        calls = {"n": 0}

        def fsync(fd):
            calls["n"] += 1
            if calls["n"] > n:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        return calls

    return arm


# --- infer.py ------------------------------------------------------------------------------------------


def infer_args(inputs, checkpoint, out: Path, *extra) -> list[str]:  # noqa: F811
    views, cams = inputs
    return [str(a) for a in ("--views", *views, "--cameras", cams, "--checkpoint", checkpoint, "--out", out,
                             "--device", "cpu", *extra)]  # fmt: skip


def _existing_out_folder(tmp, inputs, checkpoint):  # noqa: F811
    (tmp / "scene.ply").mkdir()
    (tmp / "scene.ply" / "notes.txt").write_text("mine")
    return infer_args(inputs, checkpoint, tmp / "scene.ply"), "is an existing folder"


def _existing_summary_folder(tmp, inputs, checkpoint):  # noqa: F811
    (tmp / "scene.json").mkdir()
    (tmp / "scene.json" / "notes.txt").write_text("mine")
    return infer_args(inputs, checkpoint, tmp / "scene.ply"), "is an existing folder"


def _summary_is_the_cameras_file(tmp, inputs, checkpoint):  # noqa: F811
    views, cams = inputs
    shutil.copy(cams, tmp / "scene.json")
    return infer_args((views, tmp / "scene.json"), checkpoint, tmp / "scene.ply"), "is the input --cameras"


def _view_inside_the_render_folder(tmp, inputs, checkpoint):  # noqa: F811
    views, cams = inputs
    (tmp / "scene_render").mkdir()
    shutil.copy(views[0], tmp / "scene_render" / "view_0_rgb.png")
    view = tmp / "scene_render" / "view_0_rgb.png"
    return infer_args(([view, views[1]], cams), checkpoint, tmp / "scene.ply", "--render"), "holds the input --views"


def _out_is_a_view(tmp, inputs, checkpoint):  # noqa: F811
    views, cams = inputs
    shutil.copy(views[0], tmp / "a.ply")  # a file the user named .ply, given both as a view and as --out
    return infer_args(([tmp / "a.ply", views[1]], cams), checkpoint, tmp / "a.ply"), "is the input --views"


def _proc_out(tmp, inputs, checkpoint):  # noqa: F811
    return infer_args(inputs, checkpoint, Path("/proc/self/scene.ply")), "kernel file system"


INFER_REFUSED = {
    "existing_out_folder": _existing_out_folder,
    "existing_summary_folder": _existing_summary_folder,
    "summary_is_the_cameras_file": _summary_is_the_cameras_file,
    "view_inside_the_render_folder": _view_inside_the_render_folder,
    "out_is_a_view": _out_is_a_view,
    "proc_out": _proc_out,
}


@pytest.mark.parametrize("case", sorted(INFER_REFUSED))
def test_infer_refuses_outputs_that_would_touch_user_files(tmp_path, checkpoint, inputs, capsys, case):  # noqa: F811
    args, message = INFER_REFUSED[case](tmp_path, inputs, checkpoint)
    before = snapshot(tmp_path)
    code = infer.main(args)
    contract(code, capsys.readouterr().err, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fail_after", [0, 1, 3])
def test_infer_failing_mid_write_leaves_earlier_outputs_and_user_files_as_they_were(
    tmp_path,
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    capsys,
    full_disk_after,
    fail_after,
):
    out = tmp_path / "out" / "scene.ply"
    assert infer.main(infer_args(inputs, checkpoint, out)) == 0  # an earlier good run
    (tmp_path / "out" / "scene_render").mkdir()
    (tmp_path / "out" / "scene_render" / "notes.txt").write_text("my notes")
    (tmp_path / "out" / "scene_depth").mkdir()
    capsys.readouterr()
    before = snapshot(tmp_path)
    full_disk_after(fail_after)  # the .ply, then a render PNG, then ... fail
    code = infer.main(infer_args(inputs, checkpoint, out, "--render", "--save-depth", "--size", "64"))
    contract(code, capsys.readouterr().err, "No space left on device")
    assert snapshot(tmp_path) == before  # the old scene.ply/json, the notes, the empty folder: all as they were


def test_infer_failing_in_a_new_folder_removes_only_what_it_created(
    tmp_path,
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    capsys,
    full_disk_after,
):
    (tmp_path / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    full_disk_after(2)
    code = infer.main(infer_args(inputs, checkpoint, tmp_path / "new" / "deeper" / "scene.ply", "--render"))
    contract(code, capsys.readouterr().err, "No space left on device")
    assert snapshot(tmp_path) == before


# --- data_prep/make_eval_index.py, evaluate.py, data_prep/make_shards.py, baselines -----------------------------


def test_make_eval_index_refuses_to_overwrite_the_shard_manifest(tiny_shards, capsys):
    manifest = tiny_shards / "manifest.json"
    before = manifest.read_bytes()
    code = make_eval_index.main(
        ["--shards", str(tiny_shards), "--split", "val", "--protocol", "sampled", "--out", str(manifest)]
    )
    contract(code, capsys.readouterr().err, "is the input --shards")
    assert manifest.read_bytes() == before


def evaluate_args(tiny_shards, setup, out: Path) -> list[str]:  # noqa: F811
    _, slim, _, tmp = setup
    return [str(a) for a in ("--checkpoint", slim, "--shards", tiny_shards, "--split", "val", "--index",
                             tmp / "index.json", "--out", out, "--prompt-grid", "2", "--figures", "1", "--device", "cpu")]  # fmt: skip


def test_evaluate_refuses_a_report_folder_inside_the_shards(tiny_shards, setup, capsys):  # noqa: F811
    before = snapshot(tiny_shards)
    code = evaluate.main(evaluate_args(tiny_shards, setup, tiny_shards / "val" / "report"))
    contract(code, capsys.readouterr().err, "--out")
    assert snapshot(tiny_shards) == before


@pytest.mark.slow
def test_evaluate_on_a_full_disk_keeps_the_earlier_report(tiny_shards, setup, tmp_path, capsys, full_disk_after):  # noqa: F811
    out = tmp_path / "report"
    assert evaluate.main(evaluate_args(tiny_shards, setup, out)) == 0
    (out / "notes.md").write_text("mine")
    capsys.readouterr()
    before = snapshot(tmp_path)
    full_disk_after(1)  # the figure is staged, the report fails
    code = evaluate.main(evaluate_args(tiny_shards, setup, out))
    contract(code, capsys.readouterr().err, "No space left on device")
    assert snapshot(tmp_path) == before


@pytest.fixture
def scene(tmp_path):
    from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene

    root = tmp_path / "scenes" / "room"
    write_synthetic_scene(root, 3, SyntheticConfig(height=32, width=32, frames=8))
    return root


@pytest.mark.parametrize("existing", [False, True])
def test_make_shards_on_a_full_disk(tmp_path, scene, capsys, full_disk_after, existing):
    out = tmp_path / "shards"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    full_disk_after(0)
    code = make_shards.main(["--scene", str(scene), "--out", str(out), "--size", "16", "--clip-length", "4"])
    contract(code, capsys.readouterr().err, "No space left on device")
    assert snapshot(tmp_path) == before  # no partial shard, no folder this run made; the user's file stays


def test_make_shards_refuses_writing_into_a_scene_folder(tmp_path, scene, capsys):
    before = snapshot(tmp_path)
    code = make_shards.main(["--scene", str(scene), "--out", str(scene.parent), "--default-split", "room"])
    contract(code, capsys.readouterr().err, "holds the input --scene")
    assert snapshot(tmp_path) == before


def test_baselines_refuse_a_result_over_an_input(tiny_shards, setup, capsys):  # noqa: F811
    from ffsplat.baselines.__main__ import main

    _, slim, _, tmp = setup
    index = tmp / "index.json"
    before = index.read_bytes()
    code = main(["run", "--method", "semlogits", "--checkpoint", str(slim), "--shards", str(tiny_shards),
                 "--split", "val", "--index", str(index), "--out", str(index), "--device", "cpu"])  # fmt: skip
    contract(code, capsys.readouterr().err, "is the input --index")
    assert index.read_bytes() == before


# --- the shared pieces ------------------------------------------------------------------------------------


def test_transaction_commits_all_or_nothing_and_never_removes_existing_folders(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.txt").write_text("old a")
    (tmp_path / "old" / "user.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with transaction():
            with atomic_open(tmp_path / "old" / "a.txt", "w") as f:
                f.write("new a")
            make_dirs(tmp_path / "new" / "sub")
            with atomic_open(tmp_path / "new" / "sub" / "b.txt", "w") as f:
                f.write("b")
            assert (tmp_path / "old" / "a.txt").read_text() == "old a"  # nothing visible before the commit
            raise RuntimeError("fails after two staged files")
    assert snapshot(tmp_path) == {"old": None, "old/a.txt": b"old a", "old/user.txt": b"mine"}
    with transaction():
        with atomic_open(tmp_path / "old" / "a.txt", "w") as f:
            f.write("new a")
        make_dirs(tmp_path / "new")
        with atomic_open(tmp_path / "new" / "b.txt", "w") as f:
            f.write("b")
    assert (tmp_path / "old" / "a.txt").read_text() == "new a" and (tmp_path / "new" / "b.txt").read_text() == "b"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_stale_temporaries_of_killed_runs_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".scene.ply.{dead_pid}-0123456789ab.tmp"
    old_format = tmp_path / ".scene.ply.0123456789ab.tmp"
    live = tmp_path / f".scene.ply.{os.getppid()}-0123456789ab.tmp"  # a running writer (our parent process)
    other = tmp_path / ".other.ply.1-0123456789ab.tmp"  # another target's
    user = tmp_path / ".scene.ply.notes.tmp"  # not one of ours
    for p in (stale, old_format, live, other, user):
        p.write_bytes(b"x")
    assert is_stale_temp(stale) and is_stale_temp(old_format) and not is_stale_temp(live) and not is_stale_temp(user)
    with atomic_open(tmp_path / "scene.ply") as f:
        f.write(b"ply")
    assert not stale.exists() and not old_format.exists()
    assert live.exists() and other.exists() and user.exists()


def test_check_outputs_names_the_colliding_option(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(src)
    with pytest.raises(InputError, match=r"^--out: .*link.json is the input --cameras"):
        check_outputs({"--out": link}, {"--cameras": src})
    with pytest.raises(InputError, match="is also written as"):
        check_outputs({"--a": tmp_path / "x", "--b": tmp_path / "x"}, {})
    with pytest.raises(InputError, match="is an existing file; expected a folder"):
        check_outputs({}, {}, {"--out": src})
    check_outputs({"--out": tmp_path / "new.json"}, {"--cameras": src, "--none": None}, {"--dir": tmp_path / "d"})


# --- training ---------------------------------------------------------------------------------------------


def test_damaged_last_ckpt_is_moved_aside_and_the_newest_intact_checkpoint_of_any_name_resumes(tmp_path):
    from ffsplat.training.guards import find_resume

    def save(name: str, value: float, mtime: int) -> Path:
        path = tmp_path / name
        torch.save({"state_dict": {"w": torch.full((8,), value)}}, path)
        os.utime(path, (mtime, mtime))
        return path

    save("step=2.ckpt", 2, 1000)
    save("last-v1.ckpt", 4, 2000)  # what older ffsplat wrote beside a damaged last.ckpt
    last = save("last.ckpt", 6, 3000)
    last.write_bytes(last.read_bytes()[:200])
    os.utime(last, (3000, 3000))
    path, note = find_resume(tmp_path)
    assert path == str(tmp_path / "last-v1.ckpt")
    assert not last.exists() and len(list(tmp_path.glob("last.ckpt.damaged-*"))) == 1
    assert "last.ckpt is damaged" in note and "moved aside" in note and "resuming from last-v1.ckpt" in note
    assert find_resume(tmp_path) == (str(tmp_path / "last-v1.ckpt"), None)  # checked once, not again


@pytest.mark.slow
def test_training_resumes_past_a_damaged_last_ckpt_and_writes_last_ckpt_again(tiny_shards, tmp_path, capsys):
    from ffsplat.training.fit import fit
    from tests.test_training import tiny_config

    cfg = tiny_config(tiny_shards, tmp_path, "geometry", optim__max_steps=2)
    cfg.checkpoint.every_n_steps = 1
    fit(cfg)
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    last = run_dir / "last.ckpt"
    last.write_bytes(last.read_bytes()[:300])
    cfg = tiny_config(tiny_shards, tmp_path, "geometry", optim__max_steps=3)
    cfg.checkpoint.every_n_steps = 1
    cfg.checkpoint.resume = "auto"
    module = fit(cfg)
    assert module.trainer.global_step == 3
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 3
    assert not list(run_dir.glob("last-v*.ckpt")) and len(list(run_dir.glob("last.ckpt.damaged-*"))) == 1
    assert "last.ckpt is damaged" in capsys.readouterr().err


@pytest.mark.slow
def test_training_on_a_full_disk_is_one_error_line(tiny_shards, tmp_path, capsys, full_disk_after):
    import train

    cfg = __import__("tests.test_training", fromlist=["tiny_config"]).tiny_config(tiny_shards, tmp_path, "geometry")
    cfg.checkpoint.every_n_steps = 1
    full_disk_after(0)
    code = train.run(cfg)
    contract(code, capsys.readouterr().err, "No space left on device")
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    assert not list(run_dir.glob("*.ckpt")) and not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_a_bad_train_config_never_removes_the_users_hydra_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={folder}", f"data.root={tmp_path / 'nope'}",
                           "logging.wandb_mode=disabled"], capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    contract(done.returncode, done.stderr, "data.root")
    assert snapshot(folder) == {"notes.txt": b"mine"}


# --- data_prep/export_sens.py -----------------------------------------------------------------------------


def _sens_out_is_the_scans_folder(tmp):
    from tests.test_sens import write_scene

    (tmp / "scans" / "scene0000_00").mkdir(parents=True)
    write_scene(tmp / "scans" / "scene0000_00" / "scene0000_00.sens")
    (tmp / "scans" / "scene0000_00" / "notes.txt").write_text("mine")
    return tmp / "scans" / "scene0000_00" / "scene0000_00.sens", tmp / "scans", "holds the input --sens"


def _sens_scene_folder_is_the_users(tmp):
    from tests.test_sens import write_scene

    write_scene(tmp / "scene0000_00.sens")
    (tmp / "out" / "scene0000_00").mkdir(parents=True)
    (tmp / "out" / "scene0000_00" / "notes.txt").write_text("mine")
    return tmp / "scene0000_00.sens", tmp / "out", "is not an export of ffsplat"


SENS_REFUSED = {
    "out is the scans folder": _sens_out_is_the_scans_folder,
    "scene folder is the user's": _sens_scene_folder_is_the_users,
}


@pytest.mark.parametrize("case", sorted(SENS_REFUSED))
def test_export_sens_never_replaces_a_folder_it_did_not_export(tmp_path, capsys, case):
    from data_prep import export_sens

    sens, out, message = SENS_REFUSED[case](tmp_path)
    before = snapshot(tmp_path)
    code = export_sens.main(["--sens", str(sens), "--out", str(out), "--workers", "1"])
    contract(code, capsys.readouterr().err, message)
    assert snapshot(tmp_path) == before


def test_export_sens_keeps_the_users_files_in_an_export_whose_source_changed(tmp_path, capsys):
    from data_prep import export_sens
    from tests.test_sens import write_scene

    sens, out = tmp_path / "scene0000_00.sens", tmp_path / "out"
    write_scene(sens)
    assert export_sens.main(["--sens", str(sens), "--out", str(out), "--workers", "1"]) == 0
    (out / "scene0000_00" / "notes.txt").write_text("mine")
    os.utime(sens, ns=(1, 1))  # the .sens changed: the export is stale
    before = snapshot(tmp_path)
    code = export_sens.main(["--sens", str(sens), "--out", str(out), "--workers", "1"])
    contract(code, capsys.readouterr().err, "notes.txt")
    assert snapshot(tmp_path) == before
    (out / "scene0000_00" / "notes.txt").unlink()  # without the user's file it is exported again
    assert export_sens.main(["--sens", str(sens), "--out", str(out), "--workers", "1"]) == 0
    assert "re-exported" in capsys.readouterr().out


# --- python -m ffsplat.baselines compare -----------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True])
def test_baselines_compare_failing_leaves_the_earlier_report_as_it_was(
    tiny_shards,
    setup,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    existing,
):
    import ffsplat.baselines.__main__ as cli
    import ffsplat.evaluation.evaluate as evaluation

    _, slim, _, tmp = setup
    out = tmp_path / "report"
    if existing:  # an earlier compare's report and the user's notes
        out.mkdir()
        for name in ("semlogits_sparse.json", "semlogits_dense.json", "compare.json", "compare.md"):
            (out / name).write_text(f"earlier {name}")
        (out / "notes.md").write_text("mine")
    before = snapshot(tmp_path)
    monkeypatch.setattr(evaluation, "evaluate_model", lambda *a, **k: {"reconstruction_s": 1.0})
    calls = []

    def child(cmd, **kwargs):  # the first baseline succeeds, the second fails
        calls.append(cmd)
        if len(calls) > 1:
            return subprocess.CompletedProcess(cmd, 2)
        target = Path(cmd[cmd.index("--out") + 1])
        assert out not in target.parents  # staged outside the report folder
        target.write_text('{"method": "semlogits", "setting": "sparse", "reconstruction_s": 2.0, "evaluation_s": 1.0}')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cli.subprocess, "run", child)
    code = cli.main(["compare", "--methods", "semlogits", "--checkpoint", str(slim), "--shards", str(tiny_shards),
                     "--split", "val", "--index", str(tmp / "index.json"), "--out", str(out), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "the report folder is as it was" in err, err
    assert len(calls) == 2
    assert snapshot(tmp_path) == before  # earlier results intact; a folder this run made is gone


def test_baselines_compare_refuses_a_result_path_that_is_a_folder(tiny_shards, setup, tmp_path, capsys):  # noqa: F811
    from ffsplat.baselines.__main__ import main

    _, slim, _, tmp = setup
    (tmp_path / "report" / "semlogits_dense.json").mkdir(parents=True)
    before = snapshot(tmp_path)
    code = main(["compare", "--methods", "semlogits", "--checkpoint", str(slim), "--shards", str(tiny_shards),
                 "--split", "val", "--index", str(tmp / "index.json"), "--out", str(tmp_path / "report"), "--device", "cpu"])  # fmt: skip
    contract(code, capsys.readouterr().err, "is an existing folder")
    assert snapshot(tmp_path) == before


# --- train.py ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.pt", "last.ckpt", "step=2.ckpt"])
def test_training_refuses_an_init_from_inside_its_own_run_folder(tiny_shards, tmp_path, capsys, name):
    import train
    from tests.test_training import tiny_config

    cfg = tiny_config(tiny_shards, tmp_path, "geometry")
    run_dir = Path(cfg.checkpoint.dir) / cfg.run_name
    run_dir.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.ones(2)}}, run_dir / name)  # the stage-1 model the user trained
    cfg.stage.init_from = str(run_dir / name)  # stage 2 with the same run_name would overwrite it
    before = snapshot(tmp_path)
    code = train.run(cfg)
    contract(code, capsys.readouterr().err, "the input stage.init_from")
    assert snapshot(tmp_path) == before


# --- the Python API: Scene.save_ply ------------------------------------------------------------------------


def test_api_save_ply_never_overwrites_what_the_scene_was_made_from(tmp_path, checkpoint, inputs, full_disk_after):  # noqa: F811
    import ffsplat

    views, cams = inputs
    model_file = tmp_path / "model.pt"
    shutil.copy(checkpoint, model_file)
    for i, view in enumerate(views):
        shutil.copy(view, tmp_path / f"view_{i}.png")
    shutil.copy(cams, tmp_path / "cameras.json")
    (tmp_path / "folder.ply").mkdir()
    scene = ffsplat.load(model_file, device="cpu").predict(
        [tmp_path / "view_0.png", str(tmp_path / "view_1.png")], cameras=tmp_path / "cameras.json", size=64
    )
    before = snapshot(tmp_path)
    for target, message in [("view_0.png", "is the input images"), ("view_1.png", "is the input images"),
                            ("cameras.json", "is the input cameras"), ("model.pt", "is the input the model"),
                            ("folder.ply", "is an existing folder")]:  # fmt: skip
        with pytest.raises(InputError, match=message):
            scene.save_ply(tmp_path / target)
        assert snapshot(tmp_path) == before, target
    scene.save_ply(tmp_path / "scene.ply")
    before = snapshot(tmp_path)
    full_disk_after(0)
    with pytest.raises(OSError):
        scene.save_ply(tmp_path / "scene.ply")
    assert snapshot(tmp_path) == before  # the earlier scene.ply as it was, no temporary file left


# --- data_prep/make_synthetic.py ---------------------------------------------------------------------------


def _synthetic_into_a_dataset_root(tmp):
    (tmp / "data" / "splits").mkdir(parents=True)
    (tmp / "data" / "splits" / "train.txt").write_text("scene0000_00\nscene0001_00\n")
    return tmp / "data", 2, "lists scenes that are not synthetic"


def _synthetic_splits_is_a_file(tmp):
    (tmp / "data").mkdir()
    (tmp / "data" / "splits").write_text("mine")
    return tmp / "data", 2, "is an existing file"


def _synthetic_scene_folder_is_the_users(tmp):
    (tmp / "data" / "synth_0000").mkdir(parents=True)
    (tmp / "data" / "synth_0000" / "notes.txt").write_text("mine")
    return tmp / "data", 1, "is not a scene of this generator"


SYNTHETIC_REFUSED = {
    "into a dataset root": _synthetic_into_a_dataset_root,
    "splits is a file": _synthetic_splits_is_a_file,
    "scene folder is the user's": _synthetic_scene_folder_is_the_users,
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC_REFUSED))
def test_make_synthetic_never_overwrites_the_users_files(tmp_path, capsys, case):
    from data_prep import make_synthetic

    out, expected, message = SYNTHETIC_REFUSED[case](tmp_path)
    before = snapshot(tmp_path)
    code = make_synthetic.main(["--out", str(out), "--scenes", "1", "--frames", "2", "--size", "16", "--workers", "1"])
    captured = capsys.readouterr()
    assert code == expected and message in captured.err + captured.out, captured
    after = snapshot(tmp_path)
    if expected == 2:
        assert after == before
    else:  # the scene failed and was left alone; the split files (synthetic names only) are written
        assert {k: v for k, v in after.items() if k in before} == before
        assert not [k for k in after if k.endswith(".tmp")]


@pytest.mark.slow
def test_a_bad_train_config_keeps_an_earlier_runs_log_in_the_hydra_folder(tmp_path):
    folder = tmp_path / "mine"
    (folder / ".hydra").mkdir(parents=True)
    earlier = b"[2020-01-01 00:00:00,000][__main__][INFO] - the earlier run's training log\nmore of it\n"
    (folder / "train.log").write_bytes(earlier)
    (folder / ".hydra" / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={folder}", "hydra.job.name=train", f"data.root={tmp_path / 'nope'}",
                           "logging.wandb_mode=disabled"], capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    contract(done.returncode, done.stderr, "data.root")
    assert snapshot(folder) == {".hydra": None, ".hydra/notes.txt": b"mine", "train.log": earlier}


def test_only_this_runs_lines_are_cut_from_an_appended_job_log(tmp_path):
    import time

    from ffsplat.training import cli

    log = tmp_path / "train.log"
    earlier = b"[2020-01-01 00:00:00,000][x][INFO] - earlier run\na traceback line of it\n"
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()).encode()
    log.write_bytes(earlier + b"[" + now + b",000][x][ERROR] - this run\n")
    cli._drop_this_runs_log_lines(log)
    assert log.read_bytes() == earlier
    cli._drop_this_runs_log_lines(log)  # nothing of this run left: unchanged
    assert log.read_bytes() == earlier
    log.write_bytes(b"[" + now + b",000][x][ERROR] - this run only\n")
    cli._drop_this_runs_log_lines(log)
    assert not log.exists()


# --- benchmarks' work folders (--work, GPU_CHECK_WORK) ---------------------------------------------------


def test_benchmark_work_folders_of_the_user_are_refused_never_cleared(tmp_path):
    from ffsplat.core.benchmarking import claim_work_dir, clear_work_dir

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for use in (claim_work_dir, clear_work_dir):
        with pytest.raises(InputError, match="that a benchmark did not make"):
            use(mine)
        assert snapshot(tmp_path) == before
    work = clear_work_dir(tmp_path / "new" / "work")  # made by the benchmark: reused and cleared
    (work / "shards").mkdir()
    (work / "report.json").write_text("{}")
    assert claim_work_dir(work) == work and (work / "report.json").exists()
    clear_work_dir(work)
    assert [p.name for p in work.iterdir()] == [".ffsplat-benchmark-work"]


@pytest.mark.slow
def test_a_benchmark_refuses_a_work_folder_of_the_user(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "learn_synthetic.py"), "--work", str(mine)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    contract(done.returncode, done.stderr, "--work")
    assert snapshot(tmp_path / "mine") == {"notes.txt": b"mine"}
