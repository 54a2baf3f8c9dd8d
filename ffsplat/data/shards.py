"""Streaming clip shards into training/evaluation batches (webdataset).

Training: shards are split by rank (``torch.distributed``) and by DataLoader worker, shuffled,
decoded to :class:`~ffsplat.data.clip.Clip`, and each clip yields one
:class:`~ffsplat.core.types.Example` with context and target views drawn by
:func:`ffsplat.data.sampling.sample_views`. With ``resampled=False`` each epoch covers every sample
exactly once across all ranks and workers (needs at least ranks x workers shards); with
``resampled=True`` every rank draws shards with replacement and ``epoch_length`` samples make an
epoch, which keeps DDP ranks in step however uneven the shards are.

Evaluation: :class:`EvalIndexDataset` reads the shards of the scenes named in an evaluation index
(shards are per scene, the manifest says which) and yields one example per index entry; under
DDP each rank takes every ``world``-th entry, so ranks score disjoint shares that together cover
the index (padded to a multiple of ``world``, see :meth:`EvalIndexDataset.rank_entries`).

Position in the stream (curriculum and resume): the DataLoader takes batches from its workers in
turn, so the ``j``-th batch of worker ``w`` (of ``W``) is batch ``w + j W`` of the epoch. Each
sample's training step is therefore known inside its worker, without any message from the main
process: ``step = epoch_start_step + w + j W``; the view-gap curriculum (``sample_views(...,
step)``) follows the schedule during the epoch exactly (no prefetch lag, fork or spawn alike).
Each sample's views are drawn from its own generator seeded by ``(seed, epoch, rank, worker,
position)``, so a resumed run that has consumed ``c`` batches of an epoch skips each worker's share
of them (without decoding) and continues with exactly the examples an uninterrupted run would
have seen (:meth:`ClipExamples.set_position`; exact as long as no skipped sample was corrupt).

Training decodes only the frames an example uses: the views are drawn from the clip's
``meta.json`` first, then just their members are decoded (:func:`~ffsplat.data.clip.decode_clip`
with ``positions``); the examples are the same as decoding the whole clip would give.

A sample that fails to decode or verify (:func:`ffsplat.data.clip.decode_clip` checks every
member it decodes), and a shard that is missing, truncated or unreadable, is skipped, counted and logged with
the shard and member named (never raised); :meth:`CorruptCounter.summary` is the run's list.
:func:`verify_shards` checks every shard's SHA-256 against ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ffsplat.data import remote
from ffsplat.data.clip import Clip, ClipDecodeError, clip_frame_ids, clip_length, decode_clip, stack_masks
from ffsplat.data.feature_stats import OutOfRangeFeatures, check_teacher_stats
from ffsplat.data.sampling import ViewSamplerConfig, sample_views
from ffsplat.core.types import Cameras, Example, SegmentMasks, Views

log = logging.getLogger(__name__)


def shard_location(root: str | Path, relative: str) -> str:
    """Where a file of a shard folder is: a local path, or a URL/command for a remote root
    (:mod:`ffsplat.data.remote`)."""
    return remote.stream_url(remote.join(str(root), relative)) if remote.is_remote(root) else str(Path(root) / relative)


def manifest_name(root: str | Path) -> str:
    """``<root>/manifest.json`` as a readable name (URL roots kept intact)."""
    return remote.join(str(root), "manifest.json") if remote.is_remote(root) else str(Path(root) / "manifest.json")


def read_manifest(root: str | Path) -> dict:
    """``<root>/manifest.json``, checked: raises FileNotFoundError / ValueError naming the file.

    ``root`` may be a URL or ``pipe:`` command (:mod:`ffsplat.data.remote`); the manifest is read from there."""
    if remote.is_remote(root):
        path = remote.join(str(root), "manifest.json")
        try:
            manifest = json.loads(remote.read_bytes(path).decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no shard manifest readable at {path} ({exc})") from exc
        return _check_manifest(manifest, path)
    path = Path(root) / "manifest.json"
    if not Path(root).is_dir():
        raise FileNotFoundError(f"shard folder not found: {root}")
    if not path.is_file():
        raise FileNotFoundError(f"no shard manifest at {path}; write shards with data_prep/make_shards.py first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    return _check_manifest(manifest, path)


def _check_manifest(manifest, path) -> dict:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise ValueError(f'{path}: not an ffsplat shard manifest (no "splits")')
    return manifest


def manifest_split(root: str | Path, split: str) -> dict:
    """The manifest entry of ``split``; raises KeyError with a readable message if it is absent."""
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise KeyError(f"{manifest_name(root)}: no split {split!r} (have {sorted(manifest['splits'])})")
    return manifest["splits"][split]


def manifest_shards(root: str | Path, split: str, scenes: Sequence[str] | None = None) -> list[str]:
    """Shard paths of ``split`` listed in ``<root>/manifest.json``; with ``scenes``, only the shards
    of those scenes (each shard holds one scene's clips). A scene that no shard of the split holds
    raises a ValueError naming ``data.scenes`` and the scenes there are."""
    shards = manifest_split(root, split)["shards"]
    if scenes:
        present = sorted({str(s.get("scene")) for s in shards})
        unknown = sorted(set(scenes) - set(present))
        if unknown:
            raise ValueError(f"data.scenes: {unknown} not in split {split!r} of {manifest_name(root)} "
                             f"(scenes there: {present})")  # fmt: skip
        shards = [s for s in shards if s.get("scene") in set(scenes)]
    return [shard_location(root, s["path"]) for s in shards]


def scene_frame_ids(root: str | Path, split: str, corrupt: CorruptCounter | None = None) -> dict[str, list[int]]:
    """Keyframe ids per scene stored in a split's shards (reads only each clip's ``meta.json``).

    With ``corrupt``, unreadable shards and samples are skipped and counted there instead of raising."""
    frames: dict[str, set[int]] = {}
    stages = wds.tarfile_to_samples(
        select_files=lambda name: name.endswith("meta.json"), **({"handler": corrupt} if corrupt else {})
    )
    for sample in wds.DataPipeline(wds.SimpleShardList(manifest_shards(root, split)), stages):
        try:
            meta = json.loads(sample["meta.json"])
            ids = [int(i) for i in meta["frame_ids"]]
            scene = meta["scene"]
        except (KeyError, ValueError, TypeError) as exc:
            if corrupt is None:
                raise ValueError(
                    f"{sample.get('__url__')}: sample {sample.get('__key__')!r}: unreadable meta.json ({exc})"
                ) from exc
            corrupt.record(sample.get("__url__"), f"{sample.get('__key__')}.meta.json", f"{type(exc).__name__}: {exc}")
            continue
        frames.setdefault(scene, set()).update(ids)
    return {scene: sorted(ids) for scene, ids in sorted(frames.items())}


def decode_check(root: str | Path, splits: list[str] | None = None) -> dict:
    """Decode every sample of ``splits`` (default: all) with :func:`decode_clip`'s member checks;
    returns :meth:`CorruptCounter.summary` plus ``"samples"`` (the number that decoded)."""
    names = splits or sorted(read_manifest(root)["splits"])
    corrupt, good = CorruptCounter(), 0
    for split in names:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(manifest_shards(root, split)), wds.tarfile_to_samples(handler=corrupt)
        )
        for sample in pipeline:
            try:
                decode_clip(sample)
                good += 1
            except ValueError as exc:
                corrupt.record_decode(sample, exc)
    return {"samples": good, **corrupt.summary()}


def check_index_frames(root: str | Path, split: str, index: dict[str, list[dict]]) -> dict:
    """Raise ``ValueError`` when an evaluation index names frames the readable shards do not hold.

    Frames of scenes with damaged shards are not refused (those entries are skipped and reported by
    :class:`EvalIndexDataset`); returns the bad-data summary of the shards that could not be read.
    """
    corrupt = CorruptCounter()
    frames = scene_frame_ids(root, split, corrupt)
    damaged = {
        s["scene"] for s in manifest_split(root, split)["shards"] if shard_location(root, s["path"]) in corrupt.by_shard
    }
    for scene, entries in index.items():
        have = set(frames.get(scene, []))
        for n, entry in enumerate(entries):
            absent = [i for i in list(entry["context"]) + list(entry["target"]) if i not in have]
            if absent and scene not in damaged:
                raise ValueError(f"scene {scene!r} entry {n} names frames {absent[:5]} that are not keyframes in the "
                                 f"{split!r} shards of {root} (make the index with data_prep/make_eval_index.py)")  # fmt: skip
    return corrupt.summary()


def verify_shards(root: str | Path, splits: list[str] | None = None, digest=None) -> dict:
    """Check every shard of ``splits`` (default: all) against ``manifest.json``: exists, size, SHA-256.

    ``digest``: the SHA-256 function (default: hash every file; training passes the cached one of
    :mod:`ffsplat.data.shard_hashes`). Returns ``{"checked": n, "ok": n, "bad": [{"shard", "split", "problem"}]}``.
    """
    from ffsplat.data.shard_writer import sha256

    sha256 = digest or sha256

    manifest = read_manifest(root)
    names = splits or sorted(manifest["splits"])
    bad, checked = [], 0
    for split in names:
        if split not in manifest["splits"]:
            raise KeyError(f"{manifest_name(root)}: no split {split!r} (have {sorted(manifest['splits'])})")
        for shard in manifest["splits"][split]["shards"]:
            checked += 1
            if remote.is_remote(root):  # fetched once, checked in memory
                problem = _remote_shard_problem(remote.join(str(root), shard["path"]), shard)
                if problem:
                    bad.append({"shard": shard["path"], "split": split, "problem": problem})
                continue
            path = Path(root) / shard["path"]
            if not path.is_file():
                problem = "missing"
            elif path.stat().st_size != shard.get("bytes", path.stat().st_size):
                problem = f"size {path.stat().st_size} bytes, manifest says {shard['bytes']}"
            elif "sha256" in shard and sha256(path) != shard["sha256"]:
                problem = "SHA-256 differs from manifest.json (damaged or replaced)"
            else:
                continue
            bad.append({"shard": shard["path"], "split": split, "problem": problem})
    return {"checked": checked, "ok": checked - len(bad), "bad": bad}


def _remote_shard_problem(url: str, shard: dict) -> str | None:
    """What is wrong with a remote shard against its manifest entry (None: intact)."""
    import hashlib

    try:
        data = remote.read_bytes(url)
    except FileNotFoundError as exc:
        return f"unreadable ({exc})"
    if len(data) != shard.get("bytes", len(data)):
        return f"size {len(data)} bytes, manifest says {shard['bytes']}"
    if "sha256" in shard and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        return "SHA-256 differs from manifest.json (damaged or replaced)"
    return None


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


_STREAM_NAME = re.compile(r"name='([^']+)'")


def _shard_of(exc: BaseException) -> str:
    """The shard a webdataset error is about (webdataset appends the url, or names the stream)."""
    for arg in reversed(getattr(exc, "args", ())):
        if isinstance(arg, str) and (arg.endswith(".tar") or "/" in arg) and arg != str(exc.args[0]):
            return arg
    found = _STREAM_NAME.search(str(exc))
    return found.group(1) if found else "?"


def decode_checked(sample: dict, teacher_stats: dict | None, positions=None) -> Clip:
    """:func:`decode_clip` (of the frames at ``positions`` only, when given), then teacher features far
    outside the shards' recorded statistics are a :class:`ClipDecodeError` naming the member
    (:mod:`ffsplat.data.feature_stats`)."""
    clip = decode_clip(sample, positions)
    try:
        check_teacher_stats(clip.teacher, teacher_stats)
    except OutOfRangeFeatures as exc:
        raise ClipDecodeError(str(sample.get("__key__", "?")), exc.member, str(exc)) from exc
    return clip


class TrainingDataError(RuntimeError):
    """The training stream found no usable sample (every one was damaged)."""


@dataclass
class CorruptCounter:
    """Counts, logs and lists bad data by shard and member; the pipeline continues.

    Used as a webdataset ``handler`` (unreadable/missing/truncated shards) and through
    :meth:`record` (samples that fail :func:`decode_clip`'s checks). With ``sink`` (a folder), each
    record is also appended to ``<sink>/bad_samples-<pid>.jsonl``, so that records made in
    DataLoader worker processes reach :meth:`summary` in the main process.
    """

    count: int = 0
    examples: list[str] = field(default_factory=list)
    by_shard: dict[str, dict] = field(default_factory=dict)
    sink: str | None = None

    def __call__(self, exc: BaseException) -> bool:
        shard = _shard_of(exc)
        self.record(shard, "(shard)", f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}")
        return True  # continue

    def record(self, shard: str | None, member: str, reason: str) -> None:
        shard = str(shard or "?")
        self.count += 1
        entry = self.by_shard.setdefault(shard, {"count": 0, "members": []})
        entry["count"] += 1
        if len(entry["members"]) < 20:
            entry["members"].append({"member": member, "reason": reason})
        if len(self.examples) < 20:
            self.examples.append(f"{shard}: {member}: {reason}")
        log.warning("skipping bad shard data (%d so far): %s: %s: %s", self.count, shard, member, reason)
        if self.sink:
            Path(self.sink).mkdir(parents=True, exist_ok=True)
            with open(Path(self.sink) / f"bad_samples-{os.getpid()}.jsonl", "a") as f:
                f.write(json.dumps({"shard": shard, "member": member, "reason": reason}) + "\n")

    def record_decode(self, sample: dict, exc: ValueError) -> None:
        member = f"{exc.key}.{exc.member}" if isinstance(exc, ClipDecodeError) else str(sample.get("__key__"))
        self.record(sample.get("__url__"), member, exc.reason if isinstance(exc, ClipDecodeError) else str(exc))

    def summary(self) -> dict:
        """``{"bad": n, "by_shard": {shard: {"count", "members": [{"member", "reason"}]}}}`` (all processes with a sink)."""
        if not self.sink or not Path(self.sink).is_dir():
            return {"bad": self.count, "by_shard": self.by_shard}
        merged: dict[str, dict] = {}
        total = 0
        for path in sorted(Path(self.sink).glob("bad_samples-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                total += 1
                entry = merged.setdefault(rec["shard"], {"count": 0, "members": []})
                entry["count"] += 1
                if len(entry["members"]) < 20:
                    entry["members"].append({"member": rec["member"], "reason": rec["reason"]})
        return {"bad": total, "by_shard": merged}


def clip_to_views(clip: Clip, positions: np.ndarray) -> Views:
    """Views (batch of one scene) for the given clip positions, as float tensors."""
    idx = np.asarray(positions)
    h, w = clip.images.shape[1:3]

    def tensor(array, dtype):
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array[idx])).to(dtype)[None]

    cams = Cameras(tensor(clip.intrinsics, torch.float32), tensor(clip.extrinsics, torch.float32), (h, w))
    masks = None
    if clip.masks is not None:  # the views' frames, same positions (and so the same pixels) as images/labels
        masks = SegmentMasks(
            tensor(clip.masks["segments"].astype(np.int64), torch.int64),
            tensor(clip.masks["tables"], torch.bool),
            tensor(clip.masks["counts"], torch.int64),
        )
    return Views(
        images=tensor(clip.images, torch.float32).permute(0, 1, 4, 2, 3) / 255.0,
        cameras=cams,
        near=torch.tensor([clip.near], dtype=torch.float32),
        far=torch.tensor([clip.far], dtype=torch.float32),
        depths=tensor(clip.depths, torch.float32) / 1000.0,
        labels=tensor(clip.labels, torch.int64),
        instances=tensor(clip.instances, torch.int64),
        teacher={k: tensor(v, torch.float32) for k, v in clip.teacher.items()},
        frame_ids=tensor(clip.frame_ids, torch.int64),
        masks=masks,
    )


def collate_views(items: list[Views]) -> Views:
    def cat(get):
        values = [get(v) for v in items]
        return None if values[0] is None else torch.cat(values)

    first = items[0]
    return Views(
        images=cat(lambda v: v.images),
        cameras=Cameras(
            cat(lambda v: v.cameras.intrinsics), cat(lambda v: v.cameras.extrinsics), first.cameras.image_size
        ),
        near=cat(lambda v: v.near),
        far=cat(lambda v: v.far),
        depths=cat(lambda v: v.depths),
        labels=cat(lambda v: v.labels),
        instances=cat(lambda v: v.instances),
        teacher={k: torch.cat([v.teacher[k] for v in items]) for k in first.teacher},
        frame_ids=cat(lambda v: v.frame_ids),
        masks=None if any(v.masks is None for v in items) else SegmentMasks.cat([v.masks for v in items]),
    )


def collate_examples(items: list[Example]) -> Example:
    """DataLoader ``collate_fn``: stack examples into a batch."""
    return Example(
        context=collate_views([e.context for e in items]),
        target=collate_views([e.target for e in items]),
        scenes=[s for e in items for s in e.scenes],
    )


class ClipExamples(IterableDataset):
    """Training examples from clip shards.

    Args:
        urls: shard paths (see :func:`manifest_shards`).
        sampler: how context/target views are drawn from a clip.
        shuffle_buffer: samples held for shuffling (0 = no shuffling: deterministic order).
        resampled: draw shards with replacement (use for multi-GPU training).
        epoch_length: samples per epoch per rank and worker group with ``resampled``.
        seed: base seed; each epoch, rank and worker derives its own.

    The trainer tells it where the stream stands with :meth:`set_position` before each epoch's
    iterator is created (the DataLoader copies the dataset into its workers at that moment).
    """

    def __init__(
        self,
        urls: list[str],
        sampler: ViewSamplerConfig,
        shuffle_buffer: int = 64,
        resampled: bool = False,
        epoch_length: int | None = None,
        seed: int = 0,
        teacher_stats: dict | None = None,
    ):
        super().__init__()
        self.teacher_stats = teacher_stats
        """The manifest's ``"teacher_stats"``: samples far outside them are skipped and named."""
        if not urls:
            raise ValueError("ClipExamples: no shard urls given")
        if resampled and not epoch_length:
            raise ValueError("ClipExamples: resampled=True needs epoch_length")
        self.urls, self.sampler, self.shuffle_buffer = list(urls), sampler, shuffle_buffer
        self.resampled, self.epoch_length, self.seed = resampled, epoch_length, seed
        self.epoch = 0
        self.epoch_start_step = 0  # global step of the epoch's first batch (view-gap curriculum)
        self.consumed_batches = 0  # batches of this epoch already trained on (skipped on resume)
        self.batch_size = 1  # examples per DataLoader batch (to map samples to batches)
        self.corrupt = CorruptCounter()
        self.max_consecutive_bad = 200
        """This many unusable samples in a row (and none usable) stop the stream with an error instead of
        looping forever over damaged shards."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_position(self, epoch: int, epoch_start_step: int, consumed_batches: int = 0, batch_size: int = 1) -> None:
        """Where the next iterator starts: epoch ``epoch`` began at global step ``epoch_start_step``
        and ``consumed_batches`` of its batches (of ``batch_size`` examples) were already used."""
        if consumed_batches < 0 or batch_size < 1:
            raise ValueError(f"ClipExamples.set_position: consumed_batches={consumed_batches}, batch_size={batch_size}")
        self.epoch, self.epoch_start_step = epoch, epoch_start_step
        self.consumed_batches, self.batch_size = consumed_batches, batch_size

    def sample_step(self, worker: int, workers: int, position: int) -> int:
        """Training step of this worker's ``position``-th sample of the epoch (0-based)."""
        return self.epoch_start_step + worker + (position // self.batch_size) * workers

    def skipped_samples(self, worker: int, workers: int) -> int:
        """Samples of this worker that belong to the epoch's already consumed batches."""
        return len(range(worker, self.consumed_batches, workers)) * self.batch_size

    def _my_shards(self, rank: int, world: int, worker: int, workers: int) -> list[str]:
        rng = np.random.default_rng([self.seed, self.epoch])
        urls = [self.urls[i] for i in rng.permutation(len(self.urls))] if self.shuffle_buffer else list(self.urls)
        return urls[rank::world][worker::workers]

    def __iter__(self) -> Iterator[Example]:
        rank, world = rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader asks worker 0 first; after c consumed batches the next batch (c) belongs
        # to role c mod W, so loader worker i plays role (i + c) mod W (identity when c = 0).
        worker = (worker + self.consumed_batches) % workers
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        if self.resampled:
            # the seed already names rank and worker role; webdataset's own worker seed would follow
            # the loader's worker id instead of the role
            shards = wds.ResampledShards(
                self.urls, seed=int(rng.integers(2**31)), deterministic=True, worker_seed=lambda: 0
            )
            count = -(-self.epoch_length // workers)  # this worker's share of the epoch
        else:
            shards = wds.SimpleShardList(self._my_shards(rank, world, worker, workers))
            count = None
        stages = [shards, wds.tarfile_to_samples(handler=self.corrupt)]
        if self.shuffle_buffer:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=int(rng.integers(2**31))))
        pipeline = wds.DataPipeline(*stages)
        produced = skip = self.skipped_samples(worker, workers)
        if count is not None and produced >= count:
            return
        start, bad_before, consecutive = produced, self.corrupt.count, 0
        for sample in pipeline:
            if skip:  # consumed before a resume: no decoding
                skip -= 1
                continue
            if consecutive >= self.max_consecutive_bad:
                raise TrainingDataError(f"training data: {consecutive} unusable samples in a row ({self.corrupt.examples[-1]}); "
                                   "check the shards with data_prep/verify_shards.py")  # fmt: skip
            consecutive += 1
            try:
                length = clip_length(sample)
            except ValueError as exc:
                self.corrupt.record_decode(sample, exc)
                continue
            try:
                draw = np.random.default_rng([self.seed, self.epoch, rank, worker, produced])
                context, target = sample_views(length, self.sampler, draw, self.sample_step(worker, workers, produced))
            except ValueError as exc:
                self.corrupt.record(sample.get("__url__"), str(sample.get("__key__")), f"cannot sample views: {exc}")
                continue
            # views are drawn from the meta first; only the frames they use are decoded
            used = np.unique(np.concatenate([context, target]))
            try:
                clip = decode_checked(sample, self.teacher_stats, used)
            except ValueError as exc:
                self.corrupt.record_decode(sample, exc)
                continue
            consecutive = 0
            context, target = np.searchsorted(used, context), np.searchsorted(used, target)
            yield Example(clip_to_views(clip, context), clip_to_views(clip, target), [clip.scene])
            produced += 1
            if count is not None and produced >= count:
                return
        if produced == start and self.corrupt.count > bad_before:
            raise TrainingDataError(f"training data: no usable sample in this pass, {self.corrupt.count - bad_before} bad "
                               f"({self.corrupt.examples[-1] if self.corrupt.examples else '?'}); check the shards with data_prep/verify_shards.py")  # fmt: skip


class EvalIndexDataset(IterableDataset):
    """Examples fixed by an evaluation index, read from the scenes' shards.

    Args:
        root: shard folder with ``manifest.json``.
        split: split whose shards hold the index's scenes.
        index: ``{scene: [{"context": [frame ids], "target": [frame ids]}, ...]}`` (see
            :mod:`ffsplat.data.sampling`).
    """

    def __init__(self, root: str | Path, split: str, index: dict[str, list[dict]]):
        super().__init__()
        by_scene: dict[str, list[str]] = {}
        for shard in manifest_split(root, split)["shards"]:
            by_scene.setdefault(shard["scene"], []).append(shard_location(root, shard["path"]))
        missing = sorted(set(index) - set(by_scene))
        if missing:
            raise KeyError(f"evaluation index names scenes with no shards in split {split!r}: {missing[:5]}")
        self.index, self.by_scene = index, by_scene
        self.teacher_stats = read_manifest(root).get("teacher_stats")  # samples far outside them: skipped, named
        self.corrupt = CorruptCounter()
        self.skipped_entries: list[dict] = []
        """Index entries not evaluated because their frames were in damaged shards (scene, entry, shards)."""

    def __len__(self) -> int:
        """Examples this rank yields (the whole index in a single process)."""
        return sum(len(entries) for entries in self.rank_entries(*rank_and_world()).values())

    def rank_entries(self, rank: int, world: int) -> dict[str, list[dict]]:
        """This rank's share: entry ``i`` of the index (scenes sorted, entries in order) goes to rank
        ``i % world``. As PyTorch's ``DistributedSampler`` does, the list is first padded with its
        own first entries to a multiple of ``world``, so every rank scores the same number of
        examples (at most ``world - 1`` are scored twice) and none is left with an empty loader."""
        flat = [(scene, entry) for scene in sorted(self.index) for entry in self.index[scene]]
        if flat and len(flat) % world:
            flat += (flat * world)[: world - len(flat) % world]
        mine: dict[str, list[dict]] = {}
        for scene, entry in flat[rank::world]:
            mine.setdefault(scene, []).append(entry)
        return mine

    def __iter__(self) -> Iterator[Example]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.rank_entries(*rank_and_world())
        scenes = sorted(index)[worker::workers]
        for scene in scenes:
            pipeline = wds.DataPipeline(
                wds.SimpleShardList(self.by_scene[scene]), wds.tarfile_to_samples(handler=self.corrupt)
            )
            frames: dict[int, tuple[Clip, int]] = {}
            needed = {int(i) for entry in index[scene] for i in list(entry["context"]) + list(entry["target"])}
            for sample in pipeline:
                try:  # only the frames the index names (first clip holding each) are decoded
                    ids = clip_frame_ids(sample)
                    positions = [p for p, i in enumerate(ids) if i in needed and i not in frames and i not in ids[:p]]
                    if not positions:
                        continue
                    clip = decode_checked(sample, self.teacher_stats, positions)
                except ValueError as exc:
                    self.corrupt.record_decode(sample, exc)
                    continue
                for position, frame_id in enumerate(clip.frame_ids.tolist()):
                    frames.setdefault(frame_id, (clip, position))
            for entry in index[scene]:
                wanted = list(entry["context"]) + list(entry["target"])
                absent = [i for i in wanted if i not in frames]
                damaged = sorted(set(self.by_scene[scene]) & set(self.corrupt.by_shard))
                if absent and damaged:  # the frames were in shards that failed to read: skip, say why
                    self.skipped_entries.append(
                        {"scene": scene, "entry": entry, "missing_frames": absent, "damaged_shards": damaged}
                    )
                    log.warning(
                        "evaluation index: scene %r entry skipped, frames %s are in damaged shards %s",
                        scene,
                        absent[:5],
                        damaged,
                    )
                    continue
                if absent:
                    raise KeyError(f"evaluation index: scene {scene!r} has no keyframes {absent[:5]} in its shards")
                merged = _merge_frames([frames[i] for i in wanted], scene)
                nc = len(entry["context"])
                yield Example(
                    clip_to_views(merged, np.arange(nc)),
                    clip_to_views(merged, np.arange(nc, len(wanted))),
                    [scene],
                )


def _merge_frames(picks: list[tuple[Clip, int]], scene: str) -> Clip:
    """A clip made of frames picked from (possibly) several clips of one scene."""

    def gather(attr: str):
        values = [getattr(clip, attr) for clip, _ in picks]
        return None if any(v is None for v in values) else np.stack([v[p] for v, (_, p) in zip(values, picks)])

    near = min(clip.near for clip, _ in picks)
    far = max(clip.far for clip, _ in picks)
    names = set.intersection(*(set(clip.teacher) for clip, _ in picks))
    return Clip(
        scene=scene,
        frame_ids=gather("frame_ids"),
        images=gather("images"),
        depths=gather("depths"),
        intrinsics=gather("intrinsics"),
        extrinsics=gather("extrinsics"),
        near=near,
        far=far,
        labels=gather("labels"),
        nyu40=gather("nyu40"),
        instances=gather("instances"),
        teacher={n: np.stack([clip.teacher[n][p] for clip, p in picks]) for n in sorted(names)},
        masks=None
        if any(clip.masks is None for clip, _ in picks)
        else stack_masks([clip.masks for clip, _ in picks], [p for _, p in picks]),
    )
