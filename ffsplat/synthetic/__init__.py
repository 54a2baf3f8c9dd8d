"""Procedural indoor rooms rendered exactly by ray casting: for tests, learning benchmarks and a demo model.

A synthetic scene is a closed box-shaped room (floor, ceiling, four walls) furnished with chairs,
tables, sofas, beds and box-like "other" objects, all built from axis-aligned boxes, seen by a
hand-held-like camera path. Every frame is ray cast exactly (one ray per pixel centre, slab test
against every box), so depth, labels, instances and poses are exact and consistent across views.

Conventions (the same as the rest of ffsplat and ScanNet):

* World: z up, metres. The room interior is ``[0, X] x [0, Y] x [0, Z]``: floor at ``z = 0``,
  ceiling at ``z = Z``.
* Cameras: OpenCV axes (x right, y down, z forward), camera-to-world 4x4 poses, pixel intrinsics
  with the centre of pixel ``(u, v)`` at ``(u + 0.5, v + 0.5)``, square pixels, principal point at
  the image centre. Depth is z-depth (along the optical axis) in metres.
* Every box has an 8-class evaluation label (:data:`ffsplat.data.labels.EVAL_CLASSES`, 1..8) and an
  instance id (1..; each wall, the floor and the ceiling one each, each furniture object one shared
  by all its boxes; 0 = none, which never occurs because the room is closed).
* Colour is view-independent: a procedural albedo defined on 3D surface points (value noise at
  several scales, checkers, stripes; random per surface) times Lambertian shading from a
  directional "sun", a point lamp under the ceiling and ambient light. No shadows, no specular.

On disk a scene uses the exported-ScanNet layout of :mod:`ffsplat.data.sequence`; ``label-filt``
holds ScanNet *raw* category ids (:data:`SCANNET_RAW_IDS`), so reading it back exercises the real
raw -> nyu40 -> eval8 path of :class:`ffsplat.data.labels.LabelMap`.

Modules, by concern: :mod:`~ffsplat.synthetic.config` (:class:`SyntheticConfig`, class constants,
ScanNet raw ids), :mod:`~ffsplat.synthetic.materials` (procedural albedo),
:mod:`~ffsplat.synthetic.layout` (:class:`Room`, furniture placement),
:mod:`~ffsplat.synthetic.raycast` (:func:`render_frame`), :mod:`~ffsplat.synthetic.camera_path`
and :mod:`~ffsplat.synthetic.scenes` (:func:`make_scene`, :func:`write_synthetic_scene`).
"""

from ffsplat.synthetic.camera_path import camera_path
from ffsplat.synthetic.config import EVAL_TO_RAW, SCANNET_RAW_IDS, SCENE_META, SyntheticConfig
from ffsplat.synthetic.layout import Room, generate_room
from ffsplat.synthetic.raycast import cast_rays, render_frame
from ffsplat.synthetic.scenes import make_scene, render_scene, write_synthetic_scene

__all__ = [
    "EVAL_TO_RAW",
    "SCANNET_RAW_IDS",
    "SCENE_META",
    "Room",
    "SyntheticConfig",
    "camera_path",
    "cast_rays",
    "generate_room",
    "make_scene",
    "render_frame",
    "render_scene",
    "write_synthetic_scene",
]
