"""Published evaluation protocols as ffsplat evaluation indices.

LSM (``large_spatial_model/datasets/testdata.py``): ``selected_seqs_test.json`` maps each ScanNet
scene to its selected frame names; frames are sorted (as strings, as LSM sorts them), scene
``scene0696_02`` is left out, and with ``llff_hold = 8``, ``test_ids = (1, 4)`` every frame at a
position ``i`` with ``i % 8 in test_ids`` is a target whose two source views are the frames at
``i - 1`` and ``i + 1`` (clamped to the list). :func:`lsm_eval_index` turns that into one index
entry per target: ``{"context": [frame(i - 1), frame(i + 1)], "target": [frame(i)]}`` with frame
ids parsed from the frame names (``"000120"`` / ``"frame-000120"`` / ``"120.jpg"`` -> 120).

    python -m ffsplat.evaluation.protocols lsm --seqs selected_seqs_test.json --out lsm_index.json \
        [--shards data/shards/scannet --split test]   # keep only scenes and frames the shards hold
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
                   available: dict[str, list[int]] | None = None) -> dict[str, list[dict]]:  # fmt: skip
    """LSM's test views (module doc) as an evaluation index ``{scene: [{"context", "target"}]}``.

    Args:
        seqs: the parsed ``selected_seqs_test.json``.
        available: optional frame ids per scene present in the shards; scenes missing there are
            skipped and entries using a missing frame are dropped (the caller reports the counts).
    """
    index: dict[str, list[dict]] = {}
    for scene, frames in sorted(seqs.items()):
        if scene in LSM_IGNORED_SCENES or not frames:
            continue
        if not isinstance(frames, list):
            raise ValueError(f"scene {scene!r}: expected a list of frame names, got {type(frames).__name__}")
        names = sorted(frames) if all(isinstance(f, str) for f in frames) else sorted(frames, key=str)
        ids = [frame_number(f) for f in names]
        entries = []
        for i in range(len(ids)):
            if i % llff_hold not in test_ids:
                continue
            entry = {"context": [ids[max(i - 1, 0)], ids[min(i + 1, len(ids) - 1)]], "target": [ids[i]]}
            if available is not None:
                have = set(available.get(scene, ()))
                if not set(entry["context"] + entry["target"]) <= have:
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
    available = None
    if args.shards is not None:
        from ffsplat.data.shards import scene_frame_ids

        available = {k: list(map(int, v)) for k, v in scene_frame_ids(args.shards, args.split).items()}
    try:
        index = lsm_eval_index(seqs, args.llff_hold, tuple(args.test_ids), available)
    except ValueError as exc:
        print(f"error: --seqs {args.seqs}: {exc}", file=sys.stderr)
        return 2
    if not index:
        print(f"error: --seqs {args.seqs}: no test entries (check --shards / --split)", file=sys.stderr)
        return 2
    from ffsplat.data.sampling import save_eval_index

    save_eval_index(args.out, index)
    print(f"{sum(len(v) for v in index.values())} entries in {len(index)} scenes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
