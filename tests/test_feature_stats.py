"""Issue 28: finite garbage in cached teacher features (values 1e4-1e5x their normal range) no
longer trains silently: the shard writer records each teacher's statistics in the manifest, and the
loaders skip-and-name samples far outside them, as they do corrupt members."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from ffsplat.data.feature_stats import OutOfRangeFeatures, check_teacher_stats, clip_stats, merge_stats
from ffsplat.data.sampling import ViewSamplerConfig
from ffsplat.data.shards import ClipExamples, manifest_shards, read_manifest
from tests.test_error_contract_evaluate import rewrite_tar


def test_stats_merge_and_check():
    a = {"t": np.full((2, 3, 4, 4), 0.5, np.float16)}
    b = {"t": np.full((2, 3, 4, 4), -1.0, np.float16)}
    merged = merge_stats([clip_stats(a), None, clip_stats(b)])
    assert merged == {"t": {"max_abs": 1.0, "max_rms": 1.0}}
    check_teacher_stats(b, merged)
    check_teacher_stats({"t": b["t"] * 3}, merged)  # within the tolerance
    check_teacher_stats({"t": b["t"] * 1e4}, None)  # shards without statistics: not checked
    with pytest.raises(
        OutOfRangeFeatures, match="teacher features t: largest absolute value 1e\\+04 is far outside"
    ) as err:
        check_teacher_stats({"t": b["t"] * 1e4}, merged)
    assert err.value.member == "teacher.t.npy"


def test_garbage_teacher_features_are_skipped_and_named(tiny_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    stats = read_manifest(shards)["teacher_stats"]
    assert set(stats) == {"label_seg", "label_lang"} and all(s["max_abs"] > 0 for s in stats.values())

    def garbage(sample):  # finite (float16 max is 65504) but 1e4x the normal range
        if not sample["__key__"].endswith("_0000"):
            return sample
        array = np.load(io.BytesIO(sample["teacher.label_lang.npy"]))
        buf = io.BytesIO()
        np.save(buf, (array.astype(np.float32) * 1e4).astype(np.float16))
        assert np.isfinite(np.load(io.BytesIO(buf.getvalue()))).all()
        return sample | {"teacher.label_lang.npy": buf.getvalue()}

    for tar in (shards / "train").glob("*.tar"):
        rewrite_tar(tar, garbage)
    data = ClipExamples(manifest_shards(shards, "train"), ViewSamplerConfig(num_context=2, num_target=1, min_gap=2, max_gap=4),
                        shuffle_buffer=0, teacher_stats=stats)  # fmt: skip
    examples = list(data)
    bad = data.corrupt.summary()
    members = [m for v in bad["by_shard"].values() for m in v["members"]]
    assert bad["bad"] == 2 and len(examples) >= 1, bad  # room0_0000 and room1_0000
    assert all(m["member"].endswith("_0000.teacher.label_lang.npy") and "far outside" in m["reason"] for m in members)


def test_training_verifies_shard_hashes_once_and_refuses_a_damaged_shard(tiny_shards, tmp_path, capsys):
    import train
    from ffsplat.data.shard_hashes import CACHE_NAME
    from ffsplat.training.guards import check_shard_hashes
    from tests.test_training import tiny_config

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards)
    cfg = tiny_config(shards, tmp_path)
    cfg.data.verify_hashes = True
    first = check_shard_hashes(cfg.data)
    assert first["checked"] == first["ok"] == first["hashed"] == 3 and (shards / CACHE_NAME).is_file()
    assert check_shard_hashes(cfg.data)["hashed"] == 0  # unchanged files: from the cache
    tar = sorted((shards / "train").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content (and a new mtime)
    tar.write_bytes(bytes(data))
    code = train.run(cfg)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: data.verify_hashes: 1 of 3 shards") and "SHA-256 differs" in err, err
    assert not (tmp_path / "checkpoints").exists()
