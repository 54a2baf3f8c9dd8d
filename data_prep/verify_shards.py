"""Check shards against their manifest: every shard exists, has the recorded size and SHA-256, and
(with ``--decode``) every sample decodes and passes the member checks (finite arrays of the declared
shape and dtype, decodable images, a readable ``cameras.npz``).

    python data_prep/verify_shards.py --shards shards/scannet [--split val ...] [--decode]

Prints a JSON report naming every bad shard (and, with ``--decode``, every bad member). Exit status:
0 when everything is intact, 1 when something is damaged, 2 on bad options (one ``error:`` line).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402

from ffsplat.core.errors import ArgumentParser, InputError, check_input_dir, one_line, run_command  # noqa: E402
from ffsplat.data.remote import is_remote, shard_root  # noqa: E402
from ffsplat.data.shards import decode_check, verify_shards  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=shard_root, required=True, help="shard folder with manifest.json")
    parser.add_argument("--split", action="append", default=[], help="split to check (repeatable; default: all)")
    parser.add_argument("--decode", action="store_true", help="also decode and check every sample's members")
    args = parser.parse_args(argv)
    return run_command(lambda: run(args))


def run(args) -> int:
    if not is_remote(args.shards):
        check_input_dir("--shards", args.shards, "shard folder")
    try:
        result = verify_shards(args.shards, args.split or None)
        if args.decode:
            result["decode"] = decode_check(args.shards, args.split or None)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise InputError(f"--shards/--split: {one_line(exc)}") from exc
    print(json.dumps(result, indent=1))
    damaged = bool(result["bad"]) or bool(result.get("decode", {}).get("bad"))
    if damaged:
        print(f"damaged: {len(result['bad'])} of {result['checked']} shards differ from manifest.json"
              + (f"; {result['decode']['bad']} bad samples/reads" if args.decode else ""), file=sys.stderr)  # fmt: skip
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
