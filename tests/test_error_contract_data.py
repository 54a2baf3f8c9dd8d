"""Data pipeline integrity and the data_prep commands' error contract (issues 13/19): members verified on
decode, impossible poses skipped and named at ingest, ScanNet's half-pixel shift, export into a
temporary folder with provenance, manifests that never describe shards they did not build, stale
temporaries removed, workers that die with the parent, SHA-256 verification, and a table of bad
inputs per command (one ``error:`` line, exit 2, nothing written)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ffsplat.data.clip import ClipDecodeError, decode_clip, encode_clip
from ffsplat.data.sequence import RGBDSequence, pose_problem
from ffsplat.data.sens import SensError, export_scene
from ffsplat.data.shard_writer import ShardConfig, ShardSettingsError, write_shards
from ffsplat.data.shards import verify_shards
from ffsplat.synthetic import SyntheticConfig, write_synthetic_scene
from tests.test_data import random_clip
from tests.test_sens import synthetic_frames, write_scene

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "data_prep"))
import export_sens as export_cli  # noqa: E402
import make_eval_index as index_cli  # noqa: E402
import make_shards as shards_cli  # noqa: E402
import verify_shards as verify_cli  # noqa: E402


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def damage(sample: dict, kind: str) -> tuple[dict, str]:
    sample = dict(sample)
    if kind == "bad_zip":
        sample["cameras.npz"] = sample["cameras.npz"][:40]
        return sample, "cameras.npz"
    if kind == "nan_teacher":
        feat = np.load(io.BytesIO(sample["teacher.sam.npy"]))
        feat[1, 2] = np.nan
        sample["teacher.sam.npy"] = npy(feat)
        return sample, "teacher.sam.npy"
    if kind == "teacher_dtype":
        sample["teacher.sam.npy"] = npy(np.load(io.BytesIO(sample["teacher.sam.npy"])).astype(np.float32))
        return sample, "teacher.sam.npy"
    if kind == "teacher_shape":
        sample["teacher.sam.npy"] = npy(np.zeros((4, 8, 5, 6), np.float16))
        return sample, "teacher.sam.npy"
    if kind == "nan_pose":
        cams = np.load(io.BytesIO(sample["cameras.npz"]))
        ext = cams["extrinsics"].copy()
        ext[0, 0, 3] = np.inf
        buf = io.BytesIO()
        np.savez(buf, intrinsics=cams["intrinsics"], extrinsics=ext)
        sample["cameras.npz"] = buf.getvalue()
        return sample, "cameras.npz"
    if kind == "truncated_jpeg":
        sample["rgb.002.jpg"] = sample["rgb.002.jpg"][:100]
        return sample, "rgb.002.jpg"
    if kind == "depth_8bit":
        from ffsplat.data.sequence import png_bytes

        sample["depth.001.png"] = png_bytes(np.zeros((24, 24), np.uint8))
        return sample, "depth.001.png"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["bad_zip", "nan_teacher", "teacher_dtype", "teacher_shape", "nan_pose", "truncated_jpeg", "depth_8bit"]
)
def test_decode_verifies_every_member(kind):
    sample = encode_clip(random_clip(), "k")
    decode_clip(dict(sample))  # intact: fine
    bad, member = damage(sample, kind)
    with pytest.raises(ClipDecodeError) as info:
        decode_clip(bad)
    assert info.value.member == member and f"member {member}" in str(info.value)


def test_pose_validation():
    good = np.eye(4)
    good[:3, 3] = [1, 2, 3]
    assert pose_problem(good) is None
    reflect = good.copy()
    reflect[0, 0] = -1
    far = good.copy()
    far[0, 3] = 1e6
    nan = good.copy()
    nan[1, 1] = np.nan
    assert "not orthonormal" in pose_problem(np.zeros((4, 4)))
    assert "reflection" in pose_problem(reflect)
    assert "from the origin" in pose_problem(far)
    assert "NaN" in pose_problem(nan)


def bad_pose_frames() -> list:
    frames = synthetic_frames(6)
    for i, kind in ((1, "zero"), (3, "reflect"), (4, "far")):
        c2w = frames[i][0].copy()
        if kind == "zero":
            c2w[:] = 0
        elif kind == "reflect":
            c2w[:3, 0] *= -1
        else:
            c2w[:3, 3] = [1e6, 0, 0]
        frames[i] = (c2w, *frames[i][1:])
    return frames


def test_export_skips_and_names_impossible_poses_and_records_pixel_centres(tmp_path):
    write_scene(tmp_path / "s.sens", bad_pose_frames())
    stats = export_scene(tmp_path / "s.sens", tmp_path / "out")
    assert stats["status"] == "exported" and stats["exported"] == 2
    assert sorted(stats["skipped_frames"]) == [1, 2, 3, 4]
    assert "not orthonormal" in stats["skipped_frames"][1] and "reflection" in stats["skipped_frames"][3]
    assert "from the origin" in stats["skipped_frames"][4] and "NaN" in stats["skipped_frames"][2]
    scene = tmp_path / "out" / "s"
    assert (scene / "intrinsic" / "pixel_center.txt").read_text().strip() == "0"
    seq = RGBDSequence(scene)
    raw = np.loadtxt(scene / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    np.testing.assert_allclose(seq.color_intrinsics[:2, 2], raw[:2, 2] + 0.5)  # ScanNet -> ffsplat pixel centres
    np.testing.assert_allclose(seq.color_intrinsics[:2, :2], raw[:2, :2])
    assert seq.check_frames()[0] == [0, 5]
    # finite but impossible poses in an exported folder are caught at shard time too
    np.savetxt(scene / "pose" / "5.txt", np.diag([1.0, 1.0, -1.0, 1.0]))
    assert seq.check_frames() == ([0], {5: "rotation part is a reflection (determinant < 0)"})


def test_truncated_export_leaves_nothing_and_resume_follows_the_source(tmp_path):
    sens = tmp_path / "scene0001_00.sens"
    write_scene(sens, synthetic_frames(5))
    full = sens.read_bytes()
    sens.write_bytes(full[: len(full) - 500])
    with pytest.raises(SensError, match="truncated|ends inside"):
        export_scene(sens, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # no partial folder, no .tmp
    sens.write_bytes(full)  # the user fixes the file
    first = export_scene(sens, tmp_path / "out")
    assert first["status"] == "exported" and first["exported"] == 4
    assert export_scene(sens, tmp_path / "out")["status"] == "exists, skipped"
    scene = tmp_path / "out" / "scene0001_00"
    cfg = ShardConfig(size=16, clip_length=2, min_clip_length=2, keyframe_translation=0.0)
    manifest = write_shards({"train": [scene]}, tmp_path / "shards", cfg, progress=False)
    assert manifest["splits"]["train"]["frames"] == 4
    # a new version of the .sens (6 frames): export redoes the scene, make_shards rebuilds its shards
    write_scene(sens, synthetic_frames(7, seed=3))
    assert export_scene(sens, tmp_path / "out")["status"] == "re-exported (source changed)"
    manifest = write_shards({"train": [scene]}, tmp_path / "shards", cfg, progress=False)
    assert manifest["run"]["rebuilt"] == ["scene0001_00"] and manifest["splits"]["train"]["frames"] == 6
    assert manifest["scenes"]["scene0001_00"]["source"]["export"]["bytes"] == sens.stat().st_size
    assert len(list((tmp_path / "shards" / "train").glob("*.tar"))) == len(manifest["splits"]["train"]["shards"])


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("room")
    write_synthetic_scene(root / "room", 3, SyntheticConfig(height=24, width=24, frames=8))
    for sub in ("label-filt", "instance-filt"):  # unlabelled: no label TSV needed
        shutil.rmtree(root / "room" / sub, ignore_errors=True)
    return root / "room"


def test_manifest_never_mixes_settings(room, tmp_path):
    out = tmp_path / "shards"
    cfg = ShardConfig(size=16, clip_length=4, min_clip_length=4, keyframe_translation=0.0)
    write_shards({"train": [room]}, out, cfg, progress=False)
    stale = out / "train" / ".room-0000.tar.0123456789ab.tmp"
    stale.write_bytes(b"half a shard")  # what a killed run leaves
    other = ShardConfig(size=8, clip_length=4, min_clip_length=4, keyframe_translation=0.0)
    with pytest.raises(ShardSettingsError, match=r"size: 16 there, 8 now"):
        write_shards({"train": [room]}, out, other, progress=False)
    assert json.loads((out / "manifest.json").read_text())["config"]["size"] == 16
    manifest = write_shards({"train": [room]}, out, other, progress=False, overwrite=True)
    assert manifest["config"]["size"] == 8 and manifest["scenes"]["room"]["settings"]["size"] == 8
    assert not stale.exists()
    assert verify_shards(out) == {"checked": 1, "ok": 1, "bad": []}
    tar = out / manifest["splits"]["train"]["shards"][0]["path"]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    result = verify_shards(out)
    assert result["bad"] == [
        {
            "shard": "train/room-0000.tar",
            "split": "train",
            "problem": "SHA-256 differs from manifest.json (damaged or replaced)",
        }
    ]
    assert verify_cli.main(["--shards", str(out)]) == 1


def run_cli(main, args: list, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_contract(code, err, message):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


EXPORT_CASES = {
    "missing_file": (lambda t: ["--sens", t / "none.sens"], "--sens: .sens file not found"),
    "not_sens": (lambda t: ["--sens", t / "x.txt"], "does not end in .sens"),
    "frame_skip_0": (lambda t: ["--sens", t / "a.sens", "--frame-skip", 0], "--frame-skip"),
    "workers_0": (lambda t: ["--sens", t / "a.sens", "--workers", 0], "--workers"),
    "duplicate_stems": (lambda t: ["--sens", t / "a.sens", t / "sub" / "a.sens"], "unique"),
    "out_is_file": (lambda t: ["--sens", t / "a.sens", "--out", t / "x.txt"], "--out"),
    "truncated": (lambda t: ["--sens", t / "cut.sens"], "--sens: 1 of 1 files failed"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_sens_bad_input(tmp_path, capsys, case):
    (tmp_path / "x.txt").write_text("x")
    write_scene(tmp_path / "a.sens", synthetic_frames(3))
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "a.sens", tmp_path / "sub" / "a.sens")
    (tmp_path / "cut.sens").write_bytes((tmp_path / "a.sens").read_bytes()[:-300])
    args, message = EXPORT_CASES[case]
    argv = args(tmp_path)
    if "--out" not in argv:
        argv += ["--out", tmp_path / "out"]
    code, err = run_cli(export_cli.main, argv + ["--workers", 1] if "--workers" not in argv else argv, capsys)
    err = (
        "\n".join(line for line in err.splitlines() if line.startswith("error:")) + "\n" if case == "truncated" else err
    )
    assert_contract(code, err, message)
    assert not (tmp_path / "out").exists() or not [p for p in (tmp_path / "out").iterdir()]


def test_make_shards_bad_input(room, tmp_path, capsys):
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "notascene").mkdir()
    labelled = tmp_path / "labelled"
    shutil.copytree(room, labelled)
    (labelled / "label-filt").mkdir(exist_ok=True)
    from ffsplat.synthetic.config import SCENE_META

    (labelled / SCENE_META).unlink(missing_ok=True)  # a ScanNet-like scene: raw ids, no label map of its own
    out = tmp_path / "out"
    cases = {
        "missing_root": (["--scenes-root", tmp_path / "none"], "--scenes-root: scenes folder not found"),
        "missing_list": (
            ["--scenes-root", tmp_path, "--split", f"val={tmp_path / 'none.txt'}"],
            "--split: scene list file not found",
        ),
        "bad_split_syntax": (["--scenes-root", tmp_path, "--split", "val"], "--split: expected NAME=LIST"),
        "not_a_scene": (["--scene", tmp_path / "notascene"], "is not a scene folder"),
        "labels_without_tsv": (["--scene", labelled], "--labels-tsv"),
        "size_0": (["--scene", room, "--size", 0], "--size"),
        "clip_length_1": (["--scene", room, "--clip-length", 1], "--clip-length"),
        "workers_0": (["--scene", room, "--workers", 0], "--workers"),
        "no_keyframing_skip": (["--scene", room, "--no-keyframing", "--frame-skip", 2], "--no-keyframing keeps every"),
        "unknown_teacher": (["--scene", room, "--teacher", "dino"], "--teacher: unknown teacher 'dino'"),
        "teacher_syntax": (["--scene", room, "--teacher", "sam:checkpoint"], "expected key=value"),
        "out_is_file": (["--scene", room, "--out", tmp_path / "x.txt"], "--out"),
        "no_scenes": ([], "no scenes"),
        "missing_tsv": (["--scene", room, "--labels-tsv", tmp_path / "none.tsv"], "--labels-tsv: label TSV not found"),
    }
    for name, (args, message) in cases.items():
        argv = list(args) + (["--out", out] if "--out" not in args else [])
        code, err = run_cli(shards_cli.main, argv, capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (name, err)
        assert not out.exists(), name
    # other settings than the shards already in --out: refused by the command, allowed with --overwrite
    assert run_cli(shards_cli.main, ["--scene", room, "--out", out, "--size", 16, "--clip-length", 4], capsys)[0] == 0
    code, err = run_cli(shards_cli.main, ["--scene", room, "--out", out, "--size", 8, "--clip-length", 4], capsys)
    assert_contract(code, err, "built with other settings")
    assert json.loads((out / "manifest.json").read_text())["config"]["size"] == 16
    assert (
        run_cli(
            shards_cli.main, ["--scene", room, "--out", out, "--size", 8, "--clip-length", 4, "--overwrite"], capsys
        )[0]
        == 0
    )
    assert json.loads((out / "manifest.json").read_text())["config"]["size"] == 8


def test_make_eval_index_bad_input(tiny_shards, tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    cases = {
        "missing_shards": (["--shards", tmp_path / "none"], "shard folder not found"),
        "wrong_split": (["--split", "test"], "no split 'test'"),
        "out_is_dir": (["--out", tmp_path / "adir"], "--out"),
        "gaps": (["--min-gap", 10, "--max-gap", 5], "--max-gap"),
        "all_too_short": (["--protocol", "lsm", "--lsm-frames", 500], "long enough"),
    }
    for name, (args, message) in cases.items():
        argv = ["--shards", tiny_shards, "--split", "val", "--protocol", "sampled", "--out", tmp_path / "idx.json"]
        for option, value in zip(args[::2], args[1::2]):
            if option in argv:
                argv[argv.index(option) + 1] = value
            else:
                argv += [option, value]
        code, err = run_cli(index_cli.main, argv, capsys)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (name, err)
        assert not (tmp_path / "idx.json").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


POOL_PARENT = """
import multiprocessing as mp, sys, time
from pathlib import Path
from ffsplat.data.shard_writer import _die_with_parent
if __name__ == "__main__":
    with mp.get_context("spawn").Pool(1, initializer=_die_with_parent) as pool:
        pool.apply(Path.touch, (Path(sys.argv[1]),))  # the initializer has run in the worker
        pool.apply_async(time.sleep, (300,))          # the worker is busy, as when writing a scene
        print("ready", flush=True)
        time.sleep(300)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (Linux)")
def test_kill_9_of_the_parent_takes_busy_pool_workers_along(tmp_path):
    """make_shards.py's pool workers run :func:`_die_with_parent`: a kill -9 of the parent ends them
    even in the middle of a long task (without it, the busy worker keeps running)."""
    script = tmp_path / "parent.py"
    script.write_text(POOL_PARENT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "started")], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = [p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 1 and _alive(workers[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while time.time() < deadline and _alive(workers[0]):
            time.sleep(0.1)
        assert not _alive(workers[0])
    finally:
        if proc.poll() is None:
            proc.kill()
