"""Published evaluation protocols as ffsplat evaluation indices.

LSM (``large_spatial_model/datasets/testdata.py``): ``selected_seqs_test.json`` maps each ScanNet
scene to its selected frame names; frames are sorted by frame number (numerically, as LSM sorts
them: ``"9.jpg"`` before ``"10.jpg"``, integer ids as numbers, not as strings), scene
``scene0696_02`` is left out, and with ``llff_hold = 8``, ``test_ids = (1, 4)`` every frame at a
position ``i`` with ``i % 8 in test_ids`` is a target whose two source views are the frames at
``i - 1`` and ``i + 1`` (clamped to the list). :func:`lsm_eval_index` turns that into one index
entry per target: ``{"context": [frame(i - 1), frame(i + 1)], "target": [frame(i)]}`` with frame
ids parsed from the frame names (``"000120"`` / ``"frame-000120"`` / ``"120.jpg"`` -> 120).

    python -m ffsplat.evaluation.protocols lsm --seqs selected_seqs_test.json --out lsm_index.json \
        [--shards data/shards/scannet --split test]   # keep only scenes and frames the shards hold

With ``--shards``, LSM frames the shards do not hold are counted and reported (``frames_missing``,
``entries_dropped``, ``scenes_missing`` in the printed JSON, plus a warning): keyframing drops frames,
so shards for the LSM protocol are built with keyframing off (``make_shards.py --no-keyframing``),
and the importer says when the shards were not (``shards_keyframed``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

LSM_IGNORED_SCENES = ("scene0696_02",)
_DIGITS = re.compile(r"(\d+)(?!.*\d)")


def frame_number(name: str | int) -> int:
    """The frame id of a frame name: its last run of digits (``"frame-000120.jpg"`` -> 120)."""
    if isinstance(name, int):
        return name
    match = _DIGITS.search(str(name))
    if match is None:
        raise ValueError(f"frame name {name!r} has no frame number")
    return int(match.group(1))


def lsm_eval_index(seqs: dict[str, list], llff_hold: int = 8, test_ids: tuple[int, ...] = (1, 4),
                   available: dict[str, list[int]] | None = None, dropped: dict | None = None) -> dict[str, list[dict]]:  # fmt: skip
    """LSM's test views (module doc) as an evaluation index ``{scene: [{"context", "target"}]}``.

    Args:
        seqs: the parsed ``selected_seqs_test.json``.
        available: optional frame ids per scene present in the shards; scenes missing there are
            skipped and entries using a missing frame are dropped.
        dropped: optional dict filled with what ``available`` removed: ``frames_missing`` (LSM frames
            not in the shards), ``entries_dropped`` and ``scenes_missing``.
    """
    if dropped is not None:
        dropped.update(frames_missing=0, entries_dropped=0, scenes_missing=[])
    index: dict[str, list[dict]] = {}
    for scene, frames in sorted(seqs.items()):
        if scene in LSM_IGNORED_SCENES or not frames:
            continue
        if not isinstance(frames, list):
            raise ValueError(f"scene {scene!r}: expected a list of frame names, got {type(frames).__name__}")
        ids = sorted(frame_number(f) for f in frames)  # numerically, as LSM
        have = None if available is None else set(available.get(scene, ()))
        if have is not None and dropped is not None:
            dropped["frames_missing"] += sum(i not in have for i in ids)
            if not have:
                dropped["scenes_missing"].append(scene)
        entries = []
        for i in range(len(ids)):
            if i % llff_hold not in test_ids:
                continue
            entry = {"context": [ids[max(i - 1, 0)], ids[min(i + 1, len(ids) - 1)]], "target": [ids[i]]}
            if have is not None and not set(entry["context"] + entry["target"]) <= have:
                if dropped is not None:
                    dropped["entries_dropped"] += 1
                continue
            entries.append(entry)
        if entries:
            index[scene] = entries
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ffsplat.evaluation.protocols", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="protocol", required=True)
    lsm = sub.add_parser("lsm", help="LSM's selected_seqs_test.json -> evaluation index")
    lsm.add_argument("--seqs", type=Path, required=True, help="selected_seqs_test.json")
    lsm.add_argument("--out", type=Path, required=True, help="evaluation index JSON to write")
    lsm.add_argument("--llff-hold", type=int, default=8)
    lsm.add_argument("--test-ids", type=int, nargs="+", default=[1, 4])
    lsm.add_argument("--shards", type=Path, help="keep only scenes / frames these shards hold")
    lsm.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    try:
        seqs = json.loads(args.seqs.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: --seqs {args.seqs}: not a readable JSON file ({exc})", file=sys.stderr)
        return 2
    if not isinstance(seqs, dict):
        print(f"error: --seqs {args.seqs}: expected an object {{scene: [frame names]}}", file=sys.stderr)
        return 2
    available, dropped, keyframed = None, {}, None
    if args.shards is not None:
        from ffsplat.data.shards import read_manifest, scene_frame_ids

        try:
            available = {k: list(map(int, v)) for k, v in scene_frame_ids(args.shards, args.split).items()}
            keyframed = shards_keyframed(read_manifest(args.shards).get("config", {}))
        except (FileNotFoundError, KeyError, ValueError) as exc:
            print(f"error: --shards/--split: {exc}", file=sys.stderr)
            return 2
    try:
        index = lsm_eval_index(seqs, args.llff_hold, tuple(args.test_ids), available, dropped)
    except ValueError as exc:
        print(f"error: --seqs {args.seqs}: {exc}", file=sys.stderr)
        return 2
    if not index:
        print(f"error: --seqs {args.seqs}: no test entries (check --shards / --split)", file=sys.stderr)
        return 2
    from ffsplat.data.sampling import save_eval_index

    save_eval_index(args.out, index)
    summary = {"out": str(args.out), "entries": sum(len(v) for v in index.values()), "scenes": len(index), **dropped}
    if keyframed is not None:
        summary["shards_keyframed"] = keyframed
    print(json.dumps(summary))
    if dropped.get("frames_missing"):
        hint = (" (the shards were keyframed: rebuild them with data_prep/make_shards.py --no-keyframing)"
                if keyframed else "")  # fmt: skip
        print(f"warning: {dropped['frames_missing']} LSM frames are not in --shards; {dropped['entries_dropped']} "
              f"entries and {len(dropped['scenes_missing'])} scenes dropped{hint}", file=sys.stderr)  # fmt: skip
    return 0


def shards_keyframed(config: dict) -> bool:
    """Whether shards written with this ``ShardConfig`` dict may have dropped valid frames
    (keyframe thresholds above 0 or a frame skip): not the LSM protocol's frames."""
    return bool(config.get("keyframe_translation", 0) > 0 or config.get("keyframe_rotation_deg", 0) > 0
                or config.get("frame_skip", 1) > 1)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
