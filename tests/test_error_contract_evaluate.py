"""evaluate.py's error contract (issue 13): a table of bad inputs, each -> exit code 2, one ``error:``
line naming the option/file, no report written; damaged shards are skipped and named in the report;
a resolution different from the model's training size and empty columns are explained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
from tests.test_evaluation import setup  # noqa: F401  (fixture)


def rewrite_tar(path: Path, change) -> None:
    """Rewrite a shard with ``change(sample)`` applied to every sample (to damage one member)."""
    import webdataset as wds

    samples = [change(dict(s)) for s in wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples())]
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"})


def run(*args) -> int:
    return evaluate.main([str(a) for a in args])


def base(shards, slim, index, out) -> list:
    return ["--checkpoint", slim, "--shards", shards, "--split", "val", "--index", index, "--out", out,
            "--prompt-grid", "2", "--figures", "0", "--device", "cpu"]  # fmt: skip


def with_option(args: list, option: str, value) -> list:
    args = list(args)
    args[args.index(option) + 1] = value
    return args


def bad_case(kind: str, tmp: Path, shards: Path, slim: Path, index: Path, out: Path) -> tuple[list, str]:
    args = base(shards, slim, index, out)
    if kind == "wrong_split":
        return with_option(args, "--split", "test"), "no split 'test'"
    if kind == "missing_shards":
        return with_option(args, "--shards", tmp / "nope"), "shard folder not found"
    if kind == "no_manifest":
        (tmp / "empty_shards").mkdir()
        return with_option(args, "--shards", tmp / "empty_shards"), "no shard manifest"
    if kind in ("missing_frames", "unknown_scene", "malformed_index", "empty_index"):
        bad = tmp / "bad_index.json"
        data = json.loads(index.read_text())
        scene = next(iter(data))
        if kind == "missing_frames":
            data[scene][0]["target"] = [9990, 9999]
        elif kind == "unknown_scene":
            data["no_such_scene"] = data[scene]
        bad.write_text({"malformed_index": "{not json", "empty_index": "{}"}.get(kind) or json.dumps(data))
        message = {"missing_frames": "not keyframes", "unknown_scene": "no_such_scene", "malformed_index": "not valid JSON",
                   "empty_index": "--index"}[kind]  # fmt: skip
        return with_option(args, "--index", bad), message
    if kind == "missing_index":
        return with_option(args, "--index", tmp / "none.json"), "--index: evaluation index not found"
    if kind == "missing_checkpoint":
        return with_option(args, "--checkpoint", tmp / "none.pt"), "--checkpoint: checkpoint not found"
    if kind == "checkpoint_shapes":
        blob = torch.load(slim, weights_only=True)
        name = next(k for k, v in blob["state_dict"].items() if v.ndim >= 2)
        blob["state_dict"][name] = torch.zeros(3, 3)
        from ffsplat.checkpoint import _checksum_items, tensor_checksum

        blob["checksum"]["tensors"] = tensor_checksum(_checksum_items(blob))  # intact file, wrong shapes
        torch.save(blob, tmp / "reshaped.pt")
        return with_option(args, "--checkpoint", tmp / "reshaped.pt"), "weights do not fit"
    if kind == "out_is_file":
        (tmp / "afile").write_text("x")
        return with_option(args, "--out", tmp / "afile"), "--out"
    if kind == "negative_grid":
        return with_option(args, "--prompt-grid", -1), "--prompt-grid"
    if kind == "device":
        return with_option(args, "--device", "tpu"), "--device"
    if kind == "deleted_shard":
        copy = tmp / "shards_copy"
        shutil.copytree(shards, copy)
        for tar in (copy / "val").glob("*.tar"):
            tar.unlink()
        return with_option(args, "--shards", copy), "could be read"
    raise AssertionError(kind)


CASES = ["wrong_split", "missing_shards", "no_manifest", "missing_frames", "unknown_scene", "malformed_index", "empty_index",
         "missing_index", "missing_checkpoint", "checkpoint_shapes", "out_is_file", "negative_grid", "device", "deleted_shard"]  # fmt: skip


@pytest.mark.parametrize("kind", CASES)
def test_bad_input_gives_one_error_line_exit_2_and_no_report(tiny_shards, setup, tmp_path, capsys, kind):  # noqa: F811
    _, slim, _, tmp = setup
    out = tmp_path / "report"
    args, message = bad_case(kind, tmp_path, tiny_shards, slim, tmp / "index.json", out)
    code = run(*args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


def test_damaged_shard_is_skipped_and_named_and_resolution_stated(tiny_shards, setup, tmp_path, capsys):  # noqa: F811
    module = setup[0]
    from ffsplat.data.shards import scene_frame_ids
    from ffsplat.data.sampling import save_eval_index
    from ffsplat.training.module import export_slim

    copy = tmp_path / "shards"
    shutil.copytree(tiny_shards, copy)
    frames = scene_frame_ids(copy, "val")["room2"]
    # two entries: one from the first clip (frames[:8]), one from the second (frames[8:]), whose
    # frame at position 5 (used by the entry: only the indexed frames are decoded) is damaged
    save_eval_index(tmp_path / "index.json", {"room2": [{"context": frames[0:2], "target": frames[2:4]},
                                                         {"context": frames[-4:-2], "target": frames[-2:]}]})  # fmt: skip
    tar = next((copy / "val").glob("*.tar"))
    rewrite_tar(
        tar,
        lambda sample: (
            sample | {"rgb.005.jpg": sample["rgb.005.jpg"][:120]} if sample["__key__"] == "room2_0001" else sample
        ),
    )
    module.image_size = 64  # the tiny shards are 32x32
    slim = export_slim(module, tmp_path / "model64.pt")
    del module.image_size  # the fixture is shared with other tests
    out = tmp_path / "report"
    code = run(*base(copy, slim, tmp_path / "index.json", out))
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    bad = report["bad_shard_data"]
    assert bad["bad"] >= 1 and str(tar) in bad["by_shard"], bad
    assert [m["member"] for m in bad["by_shard"][str(tar)]["members"]] == ["room2_0001.rgb.005.jpg"]
    assert len(report["skipped_entries"]) == 1 and report["results"]["model"]["examples"] == 1
    assert report["resolution"]["model_trained_at"] == 64 and report["resolution"]["evaluated_at"] == 32
    md = (out / "report.md").read_text()
    assert "trained at 64x64" in md and "Damaged shards skipped" in md
    assert "warning:" in err and "trained at 64x64" in err
    assert "`lpips` is empty: no --lpips-vgg" in md and report["empty_columns"]["lpips"].startswith("no --lpips-vgg")
