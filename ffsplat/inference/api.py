"""The public Python API: ``ffsplat.load(checkpoint) -> model.predict(images, cameras) -> scene``.

    import ffsplat

    model = ffsplat.load()                                   # the demo checkpoint, or a model.pt path
    scene = model.predict(["a.png", "b.png"], cameras="cams.json")   # cameras=None: registered with COLMAP
    scene.save_ply("scene.ply")                              # 3DGS PLY + seg_*/lang_* + class_id/class_conf
    out = scene.render()                                     # at the input views, or given Cameras / JSON
    chairs = scene.query("chair")                            # per-Gaussian mask and relevance
    print(scene.classes, out["rgb"].shape, int(chairs.mask.sum()))

Conventions: images are ``[H, W, 3]`` uint8 RGB (arrays or image paths); cameras are OpenCV axes,
camera-to-world, pixel intrinsics (a cameras JSON, :class:`ffsplat.inference.cameras.CameraFile`,
or ``(intrinsics [V, 3, 3], c2w [V, 4, 4])`` arrays at the images' sizes). Every image is
resized/centre-cropped to a square working size (the model's training size by default) with its
intrinsics. Gaussians come in pixel order (view, row, column) of the working-size context views,
which is how per-Gaussian classes are read off the rendered language field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ffsplat.checkpoint import depth_range
from ffsplat.core.types import Cameras, Gaussians, Views
from ffsplat.inference.fast import FastInferenceConfig
from ffsplat.inference.predictor import Predictor, teacher_overrides
from ffsplat.model.network import LANG, SEG
from ffsplat.objectives.policy import classify, match_query
from ffsplat.render.renderer import render

ImageLike = str | os.PathLike | np.ndarray


def load(
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    sam_checkpoint: str | None = None,
    lseg_checkpoint: str | None = None,
    clip_path: str | None = None,
    bf16: bool = False,
    compile: bool = False,
) -> Model:
    """Load a trained ``model.pt`` (default: the bundled demo checkpoint, ``ffsplat.core.config.DEMO_CHECKPOINT``).

    Args:
        device: default CUDA when available, else CPU.
        sam_checkpoint, lseg_checkpoint: local teacher weights for models conditioned on them.
        clip_path: local CLIP text model directory, for :meth:`Scene.query` words outside the classes.
        bf16, compile: the fast inference path (:mod:`ffsplat.inference.fast`): the learned layers
            under bf16 autocast (geometry stays float32) and/or ``torch.compile`` (the first
            prediction compiles). Both off by default: the GPU check has not yet measured them.
    Raises:
        ffsplat.checkpoint.CheckpointError: missing, corrupted or foreign file (the message names it).
    """
    from ffsplat.core.config import DEMO_CHECKPOINT

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fast = FastInferenceConfig(bf16=bf16, compile=compile) if (bf16 or compile) else None
    predictor = Predictor(
        checkpoint or DEMO_CHECKPOINT, device, teacher_overrides(sam_checkpoint, lseg_checkpoint), fast=fast
    )
    return Model(predictor, clip_path)


def read_image(image: ImageLike) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from an array (uint8 RGB, or grayscale) or an image file (read as a photo
    viewer shows it: :func:`ffsplat.data.image_ops.read_photo`)."""
    if isinstance(image, np.ndarray):
        array = image
    else:
        from ffsplat.data.image_ops import read_photo

        array, _ = read_photo(
            image
        )  # as a photo viewer shows it: EXIF orientation applied, any gray/palette/16-bit -> RGB
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images: expected [H, W, 3] uint8 RGB, got {array.dtype} {tuple(array.shape)}")
    return array


def estimate_cameras(
    images: Sequence[np.ndarray],
    hfov_deg: float = 60.0,
    baseline: float = 0.3,
    intrinsics: Sequence[np.ndarray] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Pose-free input: 2 or more views registered with COLMAP (:func:`ffsplat.inference.pose.register_views`),
    with the given pixel ``intrinsics`` or ones from a horizontal field of view; the first two cameras
    are put ``baseline`` metres apart (a reconstruction from photos has no absolute scale).
    Returns ``(Ks, c2w [V, 4, 4])``; raises ``PoseEstimationError`` naming views that do not register."""
    from ffsplat.inference.pose import default_intrinsics, register_views

    if len(images) < 2:
        raise ValueError(f"cameras=None registers 2 or more views; got {len(images)}")
    ks = list(intrinsics) if intrinsics is not None else [default_intrinsics(*im.shape[:2], hfov_deg) for im in images]
    registration = register_views(list(images), ks, baseline=baseline)
    return list(registration.k), registration.c2w


def _camera_arrays(
    cameras, images: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray, float | None, float | None]:
    from ffsplat.inference.cameras import CameraFile, read_cameras

    near = far = None
    if isinstance(cameras, (str, os.PathLike)):
        cameras = read_cameras(cameras)
    if isinstance(cameras, CameraFile):
        for i, (view, image) in enumerate(zip(cameras.views, images)):
            if (view.height, view.width) != image.shape[:2]:
                raise ValueError(
                    f"cameras: views[{i}] is {view.width}x{view.height} but image {i} is {image.shape[1]}x{image.shape[0]}"
                )
        near, far = cameras.near, cameras.far
        cameras = (np.stack([v.k for v in cameras.views]), np.stack([v.c2w for v in cameras.views]))
    ks, c2ws = (np.asarray(a, dtype=np.float64) for a in cameras)
    if ks.shape != (len(images), 3, 3) or c2ws.shape != (len(images), 4, 4):
        raise ValueError(
            f"cameras: expected intrinsics [{len(images)}, 3, 3] and c2w [{len(images)}, 4, 4], got {ks.shape}, {c2ws.shape}"
        )
    return list(ks), c2ws, near, far


class Model:
    """A loaded model (:func:`load`); :meth:`predict` turns photos into a :class:`Scene`."""

    def __init__(self, predictor: Predictor, clip_path: str | None = None):
        self.predictor = predictor
        self.clip_path = clip_path

    @property
    def classes(self) -> list[str]:
        """Class names; class id ``i + 1`` is ``classes[i]`` (0: unlabelled)."""
        return list(self.predictor.class_names)

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[ImageLike],
        cameras=None,
        near: float | None = None,
        far: float | None = None,
        size: int | None = None,
        hfov_deg: float = 60.0,
        baseline: float = 0.3,
    ) -> Scene:
        """Photos (+ cameras) -> a semantic Gaussian scene in one forward pass.

        Args:
            images: ``V >= 2`` images (paths or ``[H, W, 3]`` uint8 arrays).
            cameras: cameras JSON path, ``CameraFile``, ``(Ks [V, 3, 3], c2w [V, 4, 4])``, or None
                (COLMAP registration of 2+ views, intrinsics from ``hfov_deg``, the first two cameras ``baseline`` metres apart).
            near, far: scene depth range in metres (default: the cameras JSON's, else the model's training
                range ``depth_range``, else 0.5 and 10).
            size: square working size, a multiple of 4 (default: the model's training size, else 256).
        """
        from ffsplat.data.image_ops import resize_and_center_crop

        pictures = [read_image(im) for im in images]
        if len(pictures) < 2:
            raise ValueError(f"images: need at least 2, got {len(pictures)}")
        if cameras is None:
            ks, c2ws = estimate_cameras(pictures, hfov_deg, baseline)
            file_near = file_far = None
        else:
            ks, c2ws, file_near, file_far = _camera_arrays(cameras, pictures)
        default_near, default_far = depth_range(self.predictor.meta)
        near, far = near or file_near or default_near, far or file_far or default_far
        if not 0 < near < far:
            raise ValueError(f"near/far: need 0 < near < far, got {near}, {far}")
        size = size or self.predictor.meta.get("image_size") or 256
        if size % 4:
            raise ValueError(f"size must be a multiple of 4, got {size}")
        crops, kk = zip(*(resize_and_center_crop(im, k, (size, size)) for im, k in zip(pictures, ks)))
        device = self.predictor.device
        cams = Cameras(
            torch.tensor(np.stack(kk), dtype=torch.float32)[None],
            torch.tensor(c2ws, dtype=torch.float32)[None],
            (size, size),
        )
        cams.validate("cameras")
        tensor = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)[None]
        context = Views(tensor, cams, torch.tensor([near]), torch.tensor([far])).to(device)
        teacher = self.predictor.teacher_maps(context) if self.predictor.conditioned else None
        gaussians = self.predictor(context, teacher).gaussians
        lang = _decoded_language(self.predictor, gaussians, context.cameras)
        class_id, class_conf = classify(lang, self.predictor.class_embeddings, self.predictor.background_embedding)
        sources = {
            "images": [Path(im) for im in images if isinstance(im, (str, os.PathLike))],
            "cameras": [Path(cameras)] if isinstance(cameras, (str, os.PathLike)) else [],
            "the model": [self.predictor.path],
        }
        return Scene(
            self, gaussians[:1], context.cameras, lang, class_id.reshape(-1), class_conf.reshape(-1), sources=sources
        )


def _decoded_language(predictor: Predictor, gaussians: Gaussians, cameras: Cameras) -> Tensor:
    """``[T, C, H, W]`` language features (teacher space) rendered at ``cameras`` (batch 1)."""
    rendered = render(gaussians, cameras, features=[SEG, LANG])
    h, w = cameras.image_size
    return predictor.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"][0]


@dataclass
class QueryResult:
    """Gaussians matching a text query.

    Attributes:
        mask: ``[N]`` bool, Gaussians whose best label among the classes (+ the query) (+ the model's
            background) is the query.
        relevance: ``[N]`` softmax probability of the query among the same labels.
    """

    text: str
    mask: Tensor
    relevance: Tensor


@dataclass
class Scene:
    """A predicted scene: ``N`` Gaussians of one scene plus their classes.

    Attributes:
        batched: the :class:`~ffsplat.core.types.Gaussians` with batch ``[1]`` (:attr:`gaussians` unbatched,
            ``N = V * size * size``).
        cameras: the context cameras at the working size, batch ``[1, V]``.
        language: ``[V, C, size, size]`` decoded language features at the context views.
        class_id: ``[N]`` int64 in ``1..K`` (names: :attr:`classes`), 0 where the model's background
            embedding is the closest (closed vocabularies: "none of the classes"); class_conf: ``[N]``
            softmax confidence.
    """

    model: Model
    batched: Gaussians
    cameras: Cameras
    language: Tensor
    class_id: Tensor
    class_conf: Tensor
    sources: dict[str, list[Path]] = field(default_factory=dict)
    """The files the scene was made from (images, cameras, model); :meth:`save_ply` never overwrites them."""

    @property
    def classes(self) -> list[str]:
        """Class names; ``class_id == i + 1`` is ``classes[i]``."""
        return self.model.classes

    @property
    def gaussians(self) -> Gaussians:
        """The scene's Gaussians, unbatched (``means [N, 3]``, ...)."""
        return self.batched[0]

    def save_ply(self, path: str | os.PathLike) -> Path:
        """3DGS-layout binary PLY with ``seg_*``/``lang_*`` fields and ``class_id``/``class_conf`` (atomic: a failed
        write leaves an earlier file at ``path`` as it was).

        Raises:
            InputError (a ValueError): ``path`` is an existing folder or one of the files the scene was made
                from (an image, the cameras file, the model); nothing is written.
        """
        from ffsplat.core.errors import check_outputs
        from ffsplat.render.ply import write_ply

        check_outputs({"path": Path(path)}, self.sources)

        extra = {
            "class_id": self.class_id.cpu().numpy().astype(np.int32),
            "class_conf": self.class_conf.cpu().numpy().astype(np.float32),
        }
        return write_ply(path, self.gaussians.to("cpu"), extra=extra)

    def view(self, host: str = "127.0.0.1", port: int = 8080):
        """Open this scene in the browser viewer (:mod:`ffsplat.view`); returns the running
        :class:`~ffsplat.inference.viewer.Viewer` (its ``url``; ``stop()`` ends it). Queries use :meth:`query`, so
        any word works when ``clip_path`` was given to :func:`load`."""
        from ffsplat.inference.viewer import SceneData, Viewer

        data = SceneData(
            gaussians=self.gaussians.detach().to("cpu"),
            class_id=self.class_id.cpu().numpy().astype(np.int64),
            class_conf=self.class_conf.cpu().float().numpy(),
            class_names=["unlabelled", *self.classes],
            intrinsics=self.cameras.intrinsics[0].cpu().double().numpy(),
            c2w=self.cameras.extrinsics[0].cpu().double().numpy(),
            image_size=tuple(self.cameras.image_size),
        )
        return Viewer(data, host, port, query=lambda text: self.query(text).relevance.cpu().numpy())

    @torch.no_grad()
    def render(self, cameras=None) -> dict[str, Tensor]:
        """Render RGB, depth and classes.

        Args:
            cameras: None (the context views), :class:`Cameras` of batch ``[1, T]`` or ``[T]``, or a
                cameras JSON path (resized/centre-cropped to the working size).
        Returns:
            ``rgb`` ``[T, 3, H, W]`` in [0, 1], ``depth`` ``[T, H, W]`` metres, ``classes`` ``[T, H, W]`` ids.
        """
        cams = self._cameras(cameras).to(self.batched.means.device)
        rendered = render(self.batched, cams, features=[LANG])
        h, w = cams.image_size
        lang = self.model.predictor.model.decode_fields({LANG: rendered.features[LANG]}, {"lseg": (h, w)})["lseg"][0]
        predictor = self.model.predictor
        ids, _ = classify(lang, predictor.class_embeddings, predictor.background_embedding)
        return {"rgb": rendered.rgb[0].clamp(0, 1), "depth": rendered.depth[0], "classes": ids}

    def _cameras(self, cameras) -> Cameras:
        if cameras is None:
            return self.cameras
        if isinstance(cameras, (str, os.PathLike)):
            from ffsplat.inference.cameras import read_cameras

            file = read_cameras(cameras)
            sizes = {(v.height, v.width) for v in file.views}
            if len(sizes) != 1:
                raise ValueError(f"cameras: {cameras}: all views must share one image size")
            cameras = Cameras(torch.tensor(np.stack([v.k for v in file.views]), dtype=torch.float32),
                              torch.tensor(np.stack([v.c2w for v in file.views]), dtype=torch.float32), sizes.pop())  # fmt: skip
            size = self.cameras.image_size
            cameras = cameras.resize_and_center_crop(size[0], size[1])
        if cameras.intrinsics.dim() == 3:
            cameras = cameras[None]
        return cameras

    def query(self, text: str) -> QueryResult:
        """Gaussians labelled ``text``: one of :attr:`classes`, or any word with ``clip_path`` given to :func:`load`."""
        names, predictor = self.classes, self.model.predictor
        if text in names:
            target = names.index(text)
        elif self.model.clip_path:
            from ffsplat.teachers.clip_text import ClipTextEncoder

            target = ClipTextEncoder.from_pretrained(self.model.clip_path)([text])[0].to(predictor.class_embeddings)
        else:
            raise ValueError(
                f"query {text!r}: this model knows the classes {names}; other words need clip_path (a local CLIP text model)"
            )
        match, relevance = match_query(
            self.language, predictor.class_embeddings, target, predictor.background_embedding
        )
        mask, relevance = match.reshape(-1), relevance.reshape(-1)
        return QueryResult(text, mask, relevance)
