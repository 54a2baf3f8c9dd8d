"""Tests for ffsplat.data.sampling: training view sampler, curriculum, evaluation index builders and JSON I/O."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffsplat.data.sampling import (
    ViewSamplerConfig,
    build_eval_index,
    build_lsm_index,
    load_eval_index,
    positions_for,
    sample_views,
    save_eval_index,
)

REPO = Path(__file__).resolve().parents[1]
# Non-contiguous, increasing frame ids (keyframes picked by pose change, invalid frames dropped).
SCENES = {
    f"scene{s:04d}_00": sorted({int(x) for x in np.cumsum(np.random.default_rng(s).integers(1, 9, 40))})
    for s in range(6)
}


def _check_draw(ctx: np.ndarray, tgt: np.ndarray, n: int, cfg: ViewSamplerConfig, max_gap: int) -> None:
    assert ctx.shape == (cfg.num_context,) and tgt.shape == (cfg.num_target,)
    assert ctx.dtype == np.int64 and tgt.dtype == np.int64
    assert np.all(np.diff(ctx) > 0), "context sorted and distinct"
    assert np.all(np.diff(tgt) >= 0), "targets sorted"
    assert 0 <= ctx[0] and ctx[-1] < n and 0 <= tgt[0] and tgt[-1] < n
    assert cfg.min_gap <= ctx[-1] - ctx[0] <= min(max_gap, n - 1)
    if cfg.target_range == "between":
        assert ctx[0] <= tgt[0] and tgt[-1] <= ctx[-1]
    if not cfg.allow_target_overlap:
        assert not set(tgt.tolist()) & set(ctx.tolist())


@pytest.mark.parametrize("num_context", [2, 3, 4])
@pytest.mark.parametrize("target_range", ["between", "clip"])
@pytest.mark.parametrize("overlap", [False, True])
def test_sampler_properties(num_context: int, target_range: str, overlap: bool) -> None:
    cfg = ViewSamplerConfig(
        num_context=num_context,
        num_target=3,
        min_gap=4,
        max_gap=12,
        target_range=target_range,
        allow_target_overlap=overlap,
    )
    rng = np.random.default_rng(123)
    gaps, outside = set(), 0
    for _ in range(500):
        n = int(rng.integers(cfg.min_gap + 1, 33))
        ctx, tgt = sample_views(n, cfg, rng)
        _check_draw(ctx, tgt, n, cfg, cfg.max_gap)
        gaps.add(int(ctx[-1] - ctx[0]))
        outside += int(np.sum((tgt < ctx[0]) | (tgt > ctx[-1])))
        free = (
            (ctx[-1] - ctx[0] + 1) - (0 if overlap else num_context)
            if target_range == "between"
            else n - (0 if overlap else num_context)
        )
        if free >= cfg.num_target:
            assert len(set(tgt.tolist())) == cfg.num_target, "targets distinct when enough frames"
    assert gaps == set(range(4, 13)), "every allowed gap is drawn"
    assert (outside > 0) == (target_range == "clip")


def test_targets_with_replacement_when_span_is_small() -> None:
    cfg = ViewSamplerConfig(num_context=3, num_target=5, min_gap=3, max_gap=3)
    for seed in range(20):
        ctx, tgt = sample_views(10, cfg, np.random.default_rng(seed))
        free = sorted(set(range(ctx[0], ctx[-1] + 1)) - set(ctx.tolist()))
        assert len(free) == 1 and tgt.tolist() == free * 5


def test_curriculum_widens_gap() -> None:
    cfg = ViewSamplerConfig(min_gap=3, max_gap=20, gap_warmup_steps=1000)
    assert [cfg.current_max_gap(s) for s in (0, 500, 1000, 10**6)] == [3, 11, 20, 20]
    assert ViewSamplerConfig(min_gap=3, max_gap=20).current_max_gap(0) == 20

    def max_gap_seen(step: int) -> int:
        rng = np.random.default_rng(0)
        return max(int(np.ptp(sample_views(32, cfg, rng, step=step)[0])) for _ in range(300))

    seen = [max_gap_seen(s) for s in (0, 250, 500, 1000)]
    assert seen == [3, 7, 11, 20]


def test_same_seed_same_draws() -> None:
    cfg = ViewSamplerConfig(num_context=3)
    a = [sample_views(24, cfg, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    b = [sample_views(24, cfg, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    c = [sample_views(24, cfg, rng) for rng in [np.random.default_rng(8)] for _ in range(20)]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_too_short_clip_and_bad_config_raise() -> None:
    with pytest.raises(ValueError, match=r"min_gap=5.*num_context=2.*at least .*6 frames"):
        sample_views(5, ViewSamplerConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"num_context=3.*target_range='clip'"):
        sample_views(
            3, ViewSamplerConfig(num_context=3, min_gap=2, max_gap=2, target_range="clip"), np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match=r"min_gap=2 is too small.*num_context=3"):
        ViewSamplerConfig(num_context=3, min_gap=2)
    with pytest.raises(ValueError, match=r"max_gap=3 must be >= min_gap=5"):
        ViewSamplerConfig(max_gap=3)
    with pytest.raises(ValueError, match="num_context must be >= 2"):
        ViewSamplerConfig(num_context=1)
    with pytest.raises(ValueError, match="target_range"):
        ViewSamplerConfig(target_range="anywhere")  # type: ignore[arg-type]


def test_positions_for() -> None:
    ids = [3, 8, 20, 41]
    assert positions_for(ids, [41, 3, 20]).tolist() == [3, 0, 2]
    with pytest.raises(KeyError, match=r"frame id 9 not found in scene 'scene0001_00'"):
        positions_for(ids, [8, 9], scene="scene0001_00")


def test_build_eval_index_maps_to_frame_ids_and_is_deterministic() -> None:
    cfg = ViewSamplerConfig(num_context=3, num_target=4, min_gap=6, max_gap=15, gap_warmup_steps=100)
    index = build_eval_index(SCENES, cfg, seed=3, entries_per_scene=2)
    assert sorted(index) == sorted(SCENES) and all(len(v) == 2 for v in index.values())
    for scene, entries in index.items():
        for e in entries:
            ctx, tgt = positions_for(SCENES[scene], e["context"], scene), positions_for(SCENES[scene], e["target"])
            _check_draw(ctx, tgt, len(SCENES[scene]), cfg, cfg.max_gap)
    assert build_eval_index(SCENES, cfg, seed=3, entries_per_scene=2) == index
    assert build_eval_index(SCENES, cfg, seed=4, entries_per_scene=2) != index
    # A scene's entries do not depend on which other scenes are present.
    one = "scene0002_00"
    assert build_eval_index({one: SCENES[one]}, cfg, seed=3, entries_per_scene=2)[one] == index[one]


def test_build_eval_index_short_scene() -> None:
    scenes = {"short": [1, 2, 3], "ok": list(range(20))}
    with pytest.raises(ValueError, match=r"scene 'short'.*min_gap"):
        build_eval_index(scenes, ViewSamplerConfig(), seed=0)
    assert list(build_eval_index(scenes, ViewSamplerConfig(), seed=0, skip_short=True)) == ["ok"]
    with pytest.raises(ValueError, match="strictly increasing"):
        build_eval_index({"bad": [5, 4, 6, 7, 8, 9, 10]}, ViewSamplerConfig())


@pytest.mark.slow
def test_build_eval_index_same_across_processes_and_hash_seeds() -> None:
    code = (
        "import json; from ffsplat.data.sampling import ViewSamplerConfig, build_eval_index; "
        f"print(json.dumps(build_eval_index({SCENES!r}, ViewSamplerConfig(num_context=3), seed=11)))"
    )
    outs = []
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(res.stdout))
    local = build_eval_index(SCENES, ViewSamplerConfig(num_context=3), seed=11)
    assert outs[0] == outs[1] == json.loads(json.dumps(local))


def test_lsm_protocol() -> None:
    ids = list(range(1000, 1000 + 3 * 300, 3))  # 300 valid, non-contiguous frame ids
    index = build_lsm_index({"scene0707_00": ids})
    sub = np.asarray(ids)[np.round(np.linspace(0, 299, 30)).astype(int)]
    entries = index["scene0707_00"]
    targets = [int(np.flatnonzero(sub == e["target"][0])[0]) for e in entries]
    assert targets == [1, 4, 9, 12, 17, 20, 25, 28]
    for pos, e in zip(targets, entries):
        assert e["target"] == [int(sub[pos])]
        assert e["context"] == [int(sub[pos - 1]), int(sub[pos + 1])]
    assert sub[0] == ids[0] and sub[-1] == ids[-1] and len(set(sub.tolist())) == 30
    with pytest.raises(ValueError, match=r"scene 'tiny'.*num_frames=30"):
        build_lsm_index({"tiny": list(range(29))})
    assert build_lsm_index({"tiny": list(range(29))}, skip_short=True) == {}
    # Exactly 30 frames: the subsample is the scene itself.
    assert build_lsm_index({"s": list(range(30))})["s"][0] == {"context": [0, 2], "target": [1]}


def test_save_load_round_trip_and_atomic(tmp_path: Path) -> None:
    index = build_lsm_index({"a": list(range(0, 120, 2))})
    index.update(build_eval_index({"b": list(range(40))}, ViewSamplerConfig(num_context=4), seed=1))
    path = tmp_path / "evaluation_index.json"
    save_eval_index(path, index)
    assert sorted(os.listdir(tmp_path)) == ["evaluation_index.json"], "no temporary files left behind"
    assert load_eval_index(path) == index
    # An invalid index raises before writing: the old file stays intact, no temp file appears.
    with pytest.raises(ValueError, match="'target'"):
        save_eval_index(path, {"a": [{"context": [1, 2]}]})
    assert load_eval_index(path) == index and sorted(os.listdir(tmp_path)) == ["evaluation_index.json"]


def test_load_mvsplat_single_dict_form(tmp_path: Path) -> None:
    path = tmp_path / "mvsplat.json"
    path.write_text(
        json.dumps(
            {"s1": {"context": [10, 40], "target": [20, 30]}, "s2": None, "s3": [{"context": [1, 2, 5], "target": [3]}]}
        )
    )
    assert load_eval_index(path) == {
        "s1": [{"context": [10, 40], "target": [20, 30]}],
        "s2": [],
        "s3": [{"context": [1, 2, 5], "target": [3]}],
    }
    save_eval_index(tmp_path / "out.json", {"s1": {"context": np.array([10, 40]), "target": (20,)}})
    assert json.loads((tmp_path / "out.json").read_text()) == {"s1": [{"context": [10, 40], "target": [20]}]}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"context": [1, 5]}, r"missing key 'target'"),
        ({"target": [3]}, r"missing key 'context'"),
        ({"context": [1], "target": [3]}, r"'context' has 1 view\(s\); needs at least 2"),
        ({"context": [1, 5], "target": []}, r"'target' is empty"),
        ({"context": [1, 5.5], "target": [3]}, r"integer frame ids, got 5\.5"),
        ({"context": [1, 5], "target": ["3"]}, r"integer frame ids, got '3'"),
        ({"context": [1, True], "target": [3]}, r"integer frame ids, got True"),
        ({"context": [1, 5], "target": [-3]}, r"got -3"),
        ({"context": [1, 1], "target": [3]}, r"duplicate"),
        ({"context": 1, "target": [3]}, r"'context' must be a list"),
        ({"context": [1, 5], "target": [3], "targets": [4]}, r"unknown key\(s\) \['targets'\]"),
        ("oops", r"expected an object"),
    ],
)
def test_load_errors_name_path_and_scene(tmp_path: Path, entry: object, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"good": [{"context": [0, 4], "target": [2]}], "scene0042_00": [entry]}))
    with pytest.raises(ValueError, match=problem) as info:
        load_eval_index(path)
    assert str(path) in str(info.value) and "scene 'scene0042_00' entry 0" in str(info.value)


def test_load_errors_file_level(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON"):
        load_eval_index(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"must be a JSON object"):
        load_eval_index(path)
    path.write_text(json.dumps({"s": 5}))
    with pytest.raises(ValueError, match=r"scene 's': expected an entry object or a list"):
        load_eval_index(path)
