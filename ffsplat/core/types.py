"""Core data types: ``Cameras`` and ``Gaussians``.

Both are plain dataclasses of tensors with arbitrary leading batch dimensions (``...``), typically
``[B, V]`` for cameras (scenes x views) and ``[B]`` for Gaussians (scenes). Conventions are those
of :mod:`ffsplat.core.geometry`: OpenCV camera axes, camera-to-world extrinsics, pixel intrinsics whose
pixel centres sit at ``+0.5``, wxyz quaternions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ffsplat.core.geometry import invert_rigid


@dataclass
class Cameras:
    """Pinhole cameras.

    Attributes:
        intrinsics: ``[..., 3, 3]`` pixel intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` for an
            image of ``image_size``.
        extrinsics: ``[..., 4, 4]`` camera-to-world transforms (OpenCV axes: x right, y down,
            z forward).
        image_size: ``(H, W)`` in pixels that ``intrinsics`` refer to.
    """

    intrinsics: Tensor
    extrinsics: Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.intrinsics.shape[-2:] != (3, 3):
            raise ValueError(f"Cameras.intrinsics must be [..., 3, 3], got {tuple(self.intrinsics.shape)}")
        if self.extrinsics.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras.extrinsics must be [..., 4, 4], got {tuple(self.extrinsics.shape)}")
        if self.intrinsics.shape[:-2] != self.extrinsics.shape[:-2]:
            raise ValueError(
                "Cameras.intrinsics and Cameras.extrinsics must share batch dims, got "
                f"{tuple(self.intrinsics.shape[:-2])} and {tuple(self.extrinsics.shape[:-2])}"
            )
        height, width = self.image_size
        if height <= 0 or width <= 0:
            raise ValueError(f"Cameras.image_size must be positive (H, W), got {self.image_size}")
        self.image_size = (int(height), int(width))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_w2c(cls, intrinsics: Tensor, w2c: Tensor, image_size: tuple[int, int]) -> Cameras:
        """Build from world-to-camera extrinsics (e.g. COLMAP/gsplat ``viewmats``)."""
        return cls(intrinsics, invert_rigid(w2c), image_size)

    @classmethod
    def from_normalized(cls, intrinsics: Tensor, extrinsics: Tensor, image_size: tuple[int, int]) -> Cameras:
        """Build from MVSplat-style normalised intrinsics (fx/W, fy/H, cx/W, cy/H) and c2w."""
        height, width = image_size
        scale = intrinsics.new_tensor([width, height, 1.0])[:, None]
        return cls(intrinsics * scale, extrinsics, image_size)

    # ---------------------------------------------------------------- views
    @property
    def batch_shape(self) -> torch.Size:
        return self.extrinsics.shape[:-2]

    @property
    def c2w(self) -> Tensor:
        return self.extrinsics

    @property
    def w2c(self) -> Tensor:
        """``[..., 4, 4]`` world-to-camera (gsplat's ``viewmats``)."""
        return invert_rigid(self.extrinsics)

    @property
    def centers(self) -> Tensor:
        """``[..., 3]`` camera centres in world coordinates."""
        return self.extrinsics[..., :3, 3]

    @property
    def normalized_intrinsics(self) -> Tensor:
        """``[..., 3, 3]`` intrinsics divided by (W, H), as MVSplat stores them."""
        height, width = self.image_size
        scale = self.intrinsics.new_tensor([width, height, 1.0])[:, None]
        return self.intrinsics / scale

    @property
    def device(self) -> torch.device:
        return self.extrinsics.device

    def to(self, *args, **kwargs) -> Cameras:
        return replace(
            self, intrinsics=self.intrinsics.to(*args, **kwargs), extrinsics=self.extrinsics.to(*args, **kwargs)
        )

    def __getitem__(self, index) -> Cameras:
        """Index the batch dimensions (``cams[0]``, ``cams[:, 1:]``)."""
        return replace(self, intrinsics=self.intrinsics[index], extrinsics=self.extrinsics[index])

    def reshape(self, *shape: int) -> Cameras:
        return replace(
            self,
            intrinsics=self.intrinsics.reshape(*shape, 3, 3),
            extrinsics=self.extrinsics.reshape(*shape, 4, 4),
        )

    # ---------------------------------------------------------------- image-space edits
    def resize(self, height: int, width: int) -> Cameras:
        """Intrinsics for the image resized (stretched) to ``(height, width)``."""
        old_h, old_w = self.image_size
        scale = self.intrinsics.new_tensor([width / old_w, height / old_h, 1.0])[:, None]
        return replace(self, intrinsics=self.intrinsics * scale, image_size=(height, width))

    def crop(self, top: int, left: int, height: int, width: int) -> Cameras:
        """Intrinsics for the window ``[top:top+height, left:left+width]`` of the image."""
        old_h, old_w = self.image_size
        if top < 0 or left < 0 or top + height > old_h or left + width > old_w:
            raise ValueError(
                f"crop window top={top} left={left} size=({height}, {width}) lies outside the "
                f"image of size {self.image_size}"
            )
        k = self.intrinsics.clone()
        k[..., 0, 2] -= left
        k[..., 1, 2] -= top
        return replace(self, intrinsics=k, image_size=(height, width))

    def center_crop(self, height: int, width: int) -> Cameras:
        top, left = center_crop_offsets(self.image_size, (height, width))
        return self.crop(top, left, height, width)

    def resize_and_center_crop(self, height: int, width: int) -> Cameras:
        """Scale so the image covers ``(height, width)`` (aspect kept), then centre-crop.

        Image code must use :func:`cover_size` and :func:`center_crop_offsets` too, so that pixels
        and intrinsics are cut identically.
        """
        scaled = self.resize(*cover_size(self.image_size, (height, width)))
        return scaled.center_crop(height, width)

    # ---------------------------------------------------------------- checks
    def validate(self, name: str = "cameras") -> None:
        """Raise ``ValueError`` naming ``name`` if any camera is not finite or not a proper pose."""
        if not torch.isfinite(self.intrinsics).all():
            raise ValueError(f"{name}: intrinsics contain NaN or inf")
        if not torch.isfinite(self.extrinsics).all():
            raise ValueError(f"{name}: extrinsics (camera-to-world) contain NaN or inf")
        if (self.intrinsics[..., 0, 0] <= 0).any() or (self.intrinsics[..., 1, 1] <= 0).any():
            raise ValueError(f"{name}: focal lengths fx, fy must be positive")
        rot = self.extrinsics[..., :3, :3].double()
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        ortho_err = (rot.transpose(-1, -2) @ rot - eye).abs().amax() if rot.numel() else 0.0
        if rot.numel() and (ortho_err > 1e-3 or (torch.linalg.det(rot) < 0).any()):
            raise ValueError(
                f"{name}: extrinsics rotation is not a proper rotation (|R^T R - I| = {float(ortho_err):.2e}, "
                "or det(R) < 0); expected camera-to-world rigid transforms"
            )


def cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Smallest ``(H, W)`` with the aspect ratio of ``size`` that covers ``target``.

    Used together by image resizing and :meth:`Cameras.resize_and_center_crop` so both round
    identically.
    """
    height, width = size
    scale = max(target[0] / height, target[1] / width)
    return max(target[0], math.ceil(height * scale - 1e-6)), max(target[1], math.ceil(width * scale - 1e-6))


def center_crop_offsets(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """``(top, left)`` of a centred ``target`` window inside an image of ``size``."""
    return (size[0] - target[0]) // 2, (size[1] - target[1]) // 2


@dataclass
class Gaussians:
    """A batch of 3D Gaussian scenes (activated values, world space).

    Attributes:
        means: ``[..., N, 3]`` centres.
        scales: ``[..., N, 3]`` standard deviations along the local axes (linear, not log).
        rotations: ``[..., N, 4]`` unit quaternions (w, x, y, z), local -> world.
        opacities: ``[..., N]`` in ``[0, 1]`` (not logits).
        sh: ``[..., N, K, 3]`` spherical-harmonic colour coefficients, ``K = (degree + 1) ** 2``;
            colour = ``max(SH(dir) + 0.5, 0)`` (gsplat / Inria convention).
        features: named per-Gaussian feature fields, each ``[..., N, C_name]`` (for example
            ``{"seg": ..., "lang": ...}``); rendered as extra channels.
    """

    means: Tensor
    scales: Tensor
    rotations: Tensor
    opacities: Tensor
    sh: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        batch_n = self.means.shape[:-1]
        expected = {
            "means": (self.means, batch_n + (3,)),
            "scales": (self.scales, batch_n + (3,)),
            "rotations": (self.rotations, batch_n + (4,)),
            "opacities": (self.opacities, batch_n),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"Gaussians.{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
        if self.sh.shape[:-2] != batch_n or self.sh.shape[-1] != 3:
            raise ValueError(f"Gaussians.sh must have shape {tuple(batch_n)} + (K, 3), got {tuple(self.sh.shape)}")
        k = self.sh.shape[-2]
        if int(round(math.sqrt(k))) ** 2 != k:
            raise ValueError(f"Gaussians.sh has K={k} coefficients; K must be (degree + 1) ** 2")
        for name, feat in self.features.items():
            if feat.shape[:-1] != batch_n:
                raise ValueError(
                    f"Gaussians.features[{name!r}] must have shape {tuple(batch_n)} + (C,), got {tuple(feat.shape)}"
                )

    @property
    def batch_shape(self) -> torch.Size:
        return self.means.shape[:-2]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[-2]))) - 1

    @property
    def feature_dims(self) -> dict[str, int]:
        return {name: feat.shape[-1] for name, feat in self.features.items()}

    @property
    def device(self) -> torch.device:
        return self.means.device

    def _map(self, fn) -> Gaussians:
        return Gaussians(
            means=fn(self.means),
            scales=fn(self.scales),
            rotations=fn(self.rotations),
            opacities=fn(self.opacities),
            sh=fn(self.sh),
            features={name: fn(feat) for name, feat in self.features.items()},
        )

    def to(self, *args, **kwargs) -> Gaussians:
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def __getitem__(self, index) -> Gaussians:
        """Index the batch dimensions only (``g[0]`` is scene 0); use :meth:`select` for Gaussians."""
        if self.means.dim() == 2:
            raise IndexError("Gaussians has no batch dimension to index; use select() to pick Gaussians")
        return self._map(lambda t: t[index])

    def select(self, index: Tensor) -> Gaussians:
        """Keep a subset of Gaussians of an unbatched scene (``index``: bool mask or indices over N)."""
        if self.means.dim() != 2:
            raise ValueError("select() works on one scene; index the batch first (g[b])")
        return self._map(lambda t: t[index])

    @staticmethod
    def cat(items: list[Gaussians]) -> Gaussians:
        """Concatenate along the Gaussian axis N (batch shapes, SH degree and fields must match)."""
        first = items[0]
        for other in items[1:]:
            if list(other.features) != list(first.features) or other.sh.shape[-2] != first.sh.shape[-2]:
                raise ValueError("Gaussians.cat needs the same SH degree and feature fields in every item")
        return Gaussians(
            means=torch.cat([g.means for g in items], dim=-2),
            scales=torch.cat([g.scales for g in items], dim=-2),
            rotations=torch.cat([g.rotations for g in items], dim=-2),
            opacities=torch.cat([g.opacities for g in items], dim=-1),
            sh=torch.cat([g.sh for g in items], dim=-3),
            features={n: torch.cat([g.features[n] for g in items], dim=-2) for n in first.features},
        )


MASK_SCALES = ("small", "medium", "large")
"""Scales of hierarchical masks (SAM's multimask outputs 0/1/2, LangSplat's subpart/part/whole)."""


@dataclass
class SegmentMasks:
    """Three-scale binary masks per view (e.g. SAM's automatic masks), stored compactly and exactly.

    The masks of one scale may overlap, so a single id map cannot hold them. Instead each pixel
    holds the id of its *segment*, the set of masks that cover it, and a table row per segment
    lists those masks: mask ``k`` of a scale is ``tables[..., s, segments[..., s, :, :], k]``.
    Row 0 is the empty set (pixels no mask covers); tables are padded with all-False rows and
    columns, and ``counts`` says how many masks (columns) each scale really has, so masks -- their
    order and empty ones included -- round-trip exactly (:meth:`from_masks` / :meth:`to_masks`).

    Attributes:
        segments: ``[..., 3, H, W]`` int64 segment ids (``< U``), scales in :data:`MASK_SCALES` order.
        tables: ``[..., 3, U, K]`` bool segment -> mask membership.
        counts: ``[..., 3]`` int64 masks per scale (``<= K``).
    """

    segments: Tensor
    tables: Tensor
    counts: Tensor

    def __post_init__(self) -> None:
        lead = self.segments.shape[:-3]
        if (
            self.segments.dim() < 3
            or self.segments.shape[-3] != len(MASK_SCALES)
            or self.tables.shape[:-2] != self.segments.shape[:-2]
            or self.counts.shape != (*lead, len(MASK_SCALES))
        ):
            raise ValueError(
                f"SegmentMasks: segments [..., 3, H, W], tables [..., 3, U, K], counts [..., 3] with the same "
                f"leading dims; got {tuple(self.segments.shape)}, {tuple(self.tables.shape)}, {tuple(self.counts.shape)}"
            )

    @classmethod
    def from_masks(cls, masks: list[dict[str, Tensor]]) -> SegmentMasks:
        """Per image ``{scale: [K_s, H, W] bool}`` (all images ``H x W``) -> ``SegmentMasks`` with batch ``[N]``."""
        if not masks:
            raise ValueError("SegmentMasks.from_masks: no images")
        segs, tabs, counts = [], [], []
        for item in masks:
            for scale in MASK_SCALES:
                m = item[scale].bool()
                k, h, w = m.shape
                rows = m.reshape(k, h * w).T  # [HW, K] membership of every pixel
                if k == 0:
                    table, ids = rows.new_zeros((1, 0)), rows.new_zeros(h * w, dtype=torch.long)
                else:
                    table, ids = torch.unique(rows.to(torch.uint8), dim=0, return_inverse=True)
                    table = table.bool()
                    if bool(table[0].any()):  # sorted rows: the empty set, when present, comes first
                        table, ids = torch.cat([table.new_zeros((1, k)), table]), ids + 1
                segs.append(ids.reshape(h, w))
                tabs.append(table)
                counts.append(k)
        u = max(t.shape[0] for t in tabs)
        k = max(t.shape[1] for t in tabs)
        tables = torch.stack([torch.nn.functional.pad(t, (0, k - t.shape[1], 0, u - t.shape[0])) for t in tabs])
        n, s = len(masks), len(MASK_SCALES)
        return cls(
            segments=torch.stack(segs).reshape(n, s, *segs[0].shape),
            tables=tables.reshape(n, s, u, k),
            counts=torch.tensor(counts, dtype=torch.long, device=tables.device).reshape(n, s),
        )

    def to_masks(self) -> list[dict[str, Tensor]]:
        """Per view (leading dims flattened) ``{scale: [K_s, H, W] bool}``, the inverse of :meth:`from_masks`."""
        h, w = self.segments.shape[-2:]
        segments = self.segments.reshape(-1, len(MASK_SCALES), h, w)
        tables = self.tables.reshape(-1, *self.tables.shape[-3:])
        counts = self.counts.reshape(-1, len(MASK_SCALES)).tolist()
        out = []
        for seg, table, count in zip(segments, tables, counts):
            out.append(
                {
                    scale: table[s][seg[s]].permute(2, 0, 1)[: count[s]].contiguous()  # [K_s, H, W]
                    for s, scale in enumerate(MASK_SCALES)
                }
            )
        return out

    def to(self, device) -> SegmentMasks:
        return SegmentMasks(self.segments.to(device), self.tables.to(device), self.counts.to(device))

    @staticmethod
    def cat(items: list[SegmentMasks]) -> SegmentMasks:
        """Concatenate along the first dim, padding the tables to the largest ``U`` and ``K``."""
        u = max(m.tables.shape[-2] for m in items)
        k = max(m.tables.shape[-1] for m in items)
        pad = [torch.nn.functional.pad(m.tables, (0, k - m.tables.shape[-1], 0, u - m.tables.shape[-2])) for m in items]
        return SegmentMasks(
            torch.cat([m.segments for m in items]), torch.cat(pad), torch.cat([m.counts for m in items])
        )


@dataclass
class Views:
    """Posed images of ``B`` scenes with ``V`` views each (the context or the target set).

    Attributes:
        images: ``[B, V, 3, H, W]`` float RGB in ``[0, 1]``.
        cameras: batch shape ``[B, V]`` at ``(H, W)``.
        near, far: ``[B]`` depth range of each scene's clip (metres).
        depths: ``[B, V, H, W]`` sensor z-depth in metres, 0 where unknown; or None.
        labels: ``[B, V, H, W]`` int64 8-class evaluation labels (0 = ignore); or None.
        instances: ``[B, V, H, W]`` int64 instance ids (0 = none); or None.
        teacher: cached teacher features, name -> ``[B, V, C, h, w]`` float.
        frame_ids: ``[B, V]`` int64 frame numbers in the source sequence.
        masks: cached three-scale masks (``make_shards --teacher sam_masks``), batch ``[B, V]``
            at ``(H, W)``; or None.
    """

    images: Tensor
    cameras: Cameras
    near: Tensor
    far: Tensor
    depths: Tensor | None = None
    labels: Tensor | None = None
    instances: Tensor | None = None
    teacher: dict[str, Tensor] = field(default_factory=dict)
    frame_ids: Tensor | None = None
    masks: SegmentMasks | None = None

    @property
    def num_views(self) -> int:
        return self.images.shape[1]

    def to(self, device) -> Views:
        def move(t):
            return None if t is None else t.to(device)

        return Views(
            images=self.images.to(device),
            cameras=self.cameras.to(device),
            near=self.near.to(device),
            far=self.far.to(device),
            depths=move(self.depths),
            labels=move(self.labels),
            instances=move(self.instances),
            teacher={k: v.to(device) for k, v in self.teacher.items()},
            frame_ids=move(self.frame_ids),
            masks=move(self.masks),
        )


@dataclass
class Example:
    """One training/evaluation batch: context views in, target views to render and score.

    Attributes:
        context: the input views, ``[B, Vc, ...]``.
        target: held-out views, ``[B, Vt, ...]``.
        scenes: ``B`` scene names.
    """

    context: Views
    target: Views
    scenes: list[str]

    def to(self, device) -> Example:
        return Example(self.context.to(device), self.target.to(device), self.scenes)
