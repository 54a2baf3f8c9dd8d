"""The viewer's core (the command is :mod:`ffsplat.view`): a predicted scene's Gaussians as splats in
the browser (viser), coloured by RGB, class, class confidence or a query's relevance, with the input
cameras as frusta, filters, class toggles and export. It never loads a model: a query that needs one
comes in as a callable (``Viewer(query=...)``; :meth:`ffsplat.inference.api.Scene.view` passes
``Scene.query``, ``ffsplat-view --clip-path`` a model loaded by :func:`ffsplat.view.model_query`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ffsplat.core.errors import InputError
from ffsplat.core.types import Gaussians

__all__ = ["MODES", "SceneData", "Viewer", "load_scene", "serve"]

MODES = ("RGB", "class", "class confidence", "query relevance")
SH_C0 = 0.28209479177387814
UNLABELLED_GREY = (0.55, 0.55, 0.55)


@dataclass
class SceneData:
    """What the viewer shows, all on the CPU.

    Attributes:
        gaussians: unbatched Gaussians (``means [N, 3]``, ...), exported as they are.
        class_id: ``[N]`` int (0 = unlabelled) or None for a plain .ply.
        class_conf: ``[N]`` float or None.
        class_names: names of ids ``0..K`` (``class_names[0]`` = ``"unlabelled"``).
        intrinsics / c2w: ``[V, 3, 3]`` / ``[V, 4, 4]`` input cameras (OpenCV axes) or None.
        image_size: ``(H, W)`` of the cameras' intrinsics.
        source: the .ply it was read from (None: in memory).
        notes: what is off and why (printed once on start).
    """

    gaussians: Gaussians
    class_id: np.ndarray | None = None
    class_conf: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    intrinsics: np.ndarray | None = None
    c2w: np.ndarray | None = None
    image_size: tuple[int, int] = (1, 1)
    source: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_classes(self) -> bool:
        return self.class_id is not None

    def counts(self) -> dict[int, int]:
        """``{class id: Gaussians}`` of the ids that occur, most frequent first."""
        ids, counts = np.unique(self.class_id, return_counts=True)
        return {int(i): int(n) for i, n in sorted(zip(ids, counts), key=lambda item: -item[1])}

    def name(self, class_id: int) -> str:
        return self.class_names[class_id] if class_id < len(self.class_names) else f"class {class_id}"


def load_scene(ply: str | Path) -> SceneData:
    """Read ``ply`` (and the ``<stem>.json`` infer wrote beside it, if any); bad input is an InputError."""
    from ffsplat.render.ply import PlyError, read_ply

    ply = Path(ply)
    try:
        gaussians, extra = read_ply(ply)
    except PlyError as exc:
        raise InputError(str(exc)) from exc
    data = SceneData(gaussians=gaussians, source=ply)
    n = gaussians.num_gaussians
    if n == 0:
        raise InputError(f"{ply}: the .ply holds no Gaussians")
    if "class_id" in extra and "class_conf" in extra:
        data.class_id = extra["class_id"].astype(np.int64)
        data.class_conf = extra["class_conf"].astype(np.float32)
        if data.class_id.min() < 0:
            raise InputError(f"{ply}: class_id must be >= 0 (0 = unlabelled), found {data.class_id.min()}")
    else:
        data.notes.append(f"{ply} has no class_id/class_conf fields: class, class confidence and query modes are off")
    summary = ply.with_suffix(".json")
    if not summary.is_file():
        data.notes.append(f"no {summary.name} beside {ply.name}: no camera frusta, class names are ids")
    else:
        _read_summary(summary, data)
    if data.has_classes and not data.class_names:
        data.class_names = ["unlabelled"] + [f"class {i}" for i in range(1, int(data.class_id.max()) + 1)]
    return data


def _read_summary(path: Path, data: SceneData) -> None:
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file infer wrote ({exc})") from exc
    if not isinstance(summary, dict):
        raise InputError(f"{path}: expected a JSON object (infer's summary), got {type(summary).__name__}")
    names = summary.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: 'class_names' must be a list of strings")
    data.class_names = names
    cams = summary.get("cameras")
    if cams is None:
        data.notes.append(f"{path.name} has no 'cameras': no camera frusta")
        return
    try:
        k = np.asarray(cams["K"], dtype=np.float64).reshape(-1, 3, 3)
        c2w = np.asarray(cams["c2w"], dtype=np.float64).reshape(-1, 4, 4)
        size = int(cams["size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: 'cameras' needs K [V,3,3], c2w [V,4,4] and size ({exc})") from exc
    if len(k) != len(c2w) or size <= 0 or not (np.isfinite(k).all() and np.isfinite(c2w).all()):
        raise InputError(f"{path}: 'cameras' needs as many finite K as c2w and a positive size")
    data.intrinsics, data.c2w, data.image_size = k, c2w, (size, size)


# ---------------------------------------------------------------- colours
def class_palette(num_ids: int) -> np.ndarray:
    """``[num_ids, 3]`` colours in [0, 1]: the figures' class palette, grey for id 0 (unlabelled)."""
    from ffsplat.render.colormap import CLASS_PALETTE

    palette = CLASS_PALETTE.numpy()
    colours = palette[np.minimum(np.arange(num_ids), len(palette) - 1)].copy()
    colours[0] = UNLABELLED_GREY
    return colours


def class_colours(class_id: np.ndarray, rgb: np.ndarray, num_ids: int) -> np.ndarray:
    """``[N, 3]``: each Gaussian in its class colour; unlabelled ones (id 0) in the grey of their own
    RGB colour (its luminance), so the scene stays readable around the labelled objects."""
    grey = (rgb @ np.array([0.299, 0.587, 0.114]))[:, None].repeat(3, axis=1)
    return np.where((class_id == 0)[:, None], grey, class_palette(num_ids)[class_id])


def ramp(values: np.ndarray) -> np.ndarray:
    """``[N]`` in [0, 1] -> ``[N, 3]``: dark blue (0) through magenta to yellow (1)."""
    v = np.clip(values, 0.0, 1.0)[:, None]
    low, mid, high = np.array([0.05, 0.05, 0.35]), np.array([0.85, 0.2, 0.55]), np.array([1.0, 0.95, 0.2])
    return np.where(v < 0.5, low + (mid - low) * (v * 2), mid + (high - mid) * (v * 2 - 1))


def base_rgb(gaussians: Gaussians) -> np.ndarray:
    """The degree-0 SH colour ``[N, 3]`` in [0, 1]."""
    return (0.5 + SH_C0 * gaussians.sh[:, 0, :].numpy()).clip(0.0, 1.0)


def covariances(gaussians: Gaussians) -> np.ndarray:
    """``R S S^T R^T`` per Gaussian, ``[N, 3, 3]`` (rotations wxyz, world space)."""
    q = torch.nn.functional.normalize(gaussians.rotations.double(), dim=-1).numpy()
    w, x, y, z = q.T
    r = np.stack(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    ).transpose(2, 0, 1)
    rs = r * gaussians.scales.double().numpy()[:, None, :]
    return (rs @ rs.transpose(0, 2, 1)).astype(np.float32)


# ---------------------------------------------------------------- the viewer
class Viewer:
    """A running viser server showing one scene (``stop()`` ends it).

    Args:
        data: the scene (:func:`load_scene` or :meth:`ffsplat.inference.api.Scene.view`).
        host / port: where to serve (port 0: a free one).
        query: ``text -> [N] relevance in [0, 1]``, or raises ValueError with a message; default: the
            class-name match from ``class_id``/``class_conf`` (see the module docstring).
        export_path: default target of the export button (``<stem>_visible.ply``).
        mode: colour mode at start, one of :data:`MODES` (RGB for a .ply without class fields).
    """

    def __init__(
        self,
        data: SceneData,
        host: str = "127.0.0.1",
        port: int = 8080,
        query: Callable[[str], np.ndarray] | None = None,
        export_path: Path | None = None,
        mode: str = "RGB",
    ):
        import viser

        self.data = data
        self.query_fn = query or self._class_query
        self._rgb = base_rgb(data.gaussians)
        self._cov = covariances(data.gaussians)
        self._opacity = data.gaussians.opacities.numpy().astype(np.float32)
        self._max_scale = data.gaussians.scales.numpy().max(axis=1)
        self._relevance = np.zeros(len(self._rgb), np.float32)
        self.colors = self._rgb
        self.visible = np.ones(len(self._rgb), bool)
        self.status = ""
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("-y")  # OpenCV cameras: y points down
        self.frusta = self._add_cameras()
        self._build_gui(export_path)
        if mode not in self.mode.options:
            self.server.stop()
            raise InputError(f"--mode: {mode!r} needs class fields; this scene offers {list(self.mode.options)}")
        self.mode.value = mode
        self.refresh()

    # ---- server
    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def stop(self) -> None:
        self.server.stop()

    # ---- scene
    def _add_cameras(self) -> list:
        import viser.transforms as tf

        d = self.data
        if d.c2w is None:
            return []
        h, w = d.image_size
        extent = float(np.linalg.norm(d.c2w[:, :3, 3] - d.c2w[0, :3, 3], axis=1).max())
        scale = max(0.05, 0.25 * extent) if extent > 0 else 0.2
        frusta = []
        for i, (k, c2w) in enumerate(zip(d.intrinsics, d.c2w)):
            fov = 2 * math.atan(h / 2 / k[1, 1])
            frusta.append(
                self.server.scene.add_camera_frustum(
                    f"/cameras/view_{i}",
                    fov=fov,
                    aspect=w / h,
                    scale=scale,
                    thickness=2.0,
                    thickness_units="screen",
                    color=(230, 60, 30) if i == 0 else (40, 40, 40),
                    wxyz=tf.SO3.from_matrix(c2w[:3, :3]).wxyz,
                    position=c2w[:3, 3],
                )
            )
        first, k = d.c2w[0], d.intrinsics[0]
        depth = float(np.median((d.gaussians.means.numpy() - first[:3, 3]) @ first[:3, 2]))
        cam = self.server.initial_camera
        cam.position = first[:3, 3]
        cam.look_at = first[:3, 3] + first[:3, 2] * max(depth, 0.1)
        cam.up = -first[:3, 1]
        cam.fov = 2 * math.atan(h / 2 / k[1, 1])
        return frusta

    def refresh(self) -> None:
        """Recompute colours and the visible subset from the GUI state and send the splats."""
        d, mode = self.data, self.mode.value
        if mode == "class":
            self.colors = class_colours(d.class_id, self._rgb, max(len(d.class_names), int(d.class_id.max()) + 1))
        elif mode == "class confidence":
            self.colors = ramp(d.class_conf)
        elif mode == "query relevance":
            self.colors = ramp(self._relevance)
        else:
            self.colors = self._rgb
        visible = (self._opacity >= self.min_opacity.value) & (self._max_scale <= self.max_scale.value)
        if d.has_classes:
            hidden = [i for i, box in self.class_boxes.items() if not box.value]
            visible &= ~np.isin(d.class_id, hidden)
        self.visible = visible
        keep = np.flatnonzero(visible)
        if len(keep) == 0:  # viser needs at least one Gaussian: send one fully transparent
            keep, alpha = np.zeros(1, np.int64), np.zeros((1, 1), np.float32)
        else:
            alpha = self._opacity[keep, None]
        self.splats = self.server.scene.add_gaussian_splats(
            "/gaussians",
            centers=d.gaussians.means.numpy()[keep],
            covariances=self._cov[keep],
            rgbs=self.colors[keep].astype(np.float32),
            opacities=alpha,
        )
        self.counter.value = f"{int(visible.sum())} of {len(visible)} Gaussians shown"

    # ---- GUI
    def _build_gui(self, export_path: Path | None) -> None:
        gui, d = self.server.gui, self.data
        modes = list(MODES) if d.has_classes else ["RGB"]
        self.mode = gui.add_dropdown("Colour", modes, initial_value="RGB")
        self.query_text = gui.add_text(
            "Query", "", disabled=not d.has_classes, hint="a class name (or any word with CLIP)"
        )
        self.min_opacity = gui.add_slider("Min opacity", 0.0, 1.0, 0.01, 0.0)
        top = float(self._max_scale.max())
        self.max_scale = gui.add_slider("Max scale (m)", 0.0, top, top / 100 or 1e-3, top)
        self.counter = gui.add_markdown("")
        self.message = gui.add_markdown("")
        self.class_boxes: dict = {}
        self.legend: dict = {}
        if d.has_classes:
            palette = class_palette(max(len(d.class_names), int(d.class_id.max()) + 1))
            with gui.add_folder("Classes"):
                for cid, count in d.counts().items():
                    colour = tuple(int(round(c * 255)) for c in palette[cid])
                    self.legend[cid] = gui.add_rgb(f"{d.name(cid)} ({count})", colour, disabled=True)
                    self.class_boxes[cid] = gui.add_checkbox(f"show {d.name(cid)}", True)
                    self.class_boxes[cid].on_update(lambda _: self.refresh())
        default = export_path or (
            d.source.with_name(f"{d.source.stem}_visible.ply") if d.source else Path("visible.ply")
        )
        self.export_path = gui.add_text("Export to", str(default))
        self.export_button = gui.add_button("Export visible Gaussians (.ply)")
        self.export_button.on_click(lambda _: self._export_clicked())
        for control in (self.mode, self.min_opacity, self.max_scale):
            control.on_update(lambda _: self.refresh())
        self.query_text.on_update(lambda _: self.set_query(self.query_text.value))

    def _say(self, text: str) -> None:
        self.status = text
        self.message.content = text

    def set_query(self, text: str) -> None:
        """Colour by the relevance of ``text`` (the mode switches to query relevance)."""
        if not text.strip():
            return
        try:
            relevance = np.asarray(self.query_fn(text.strip()), dtype=np.float32).reshape(-1)
        except ValueError as exc:
            self._say(f"query: {exc}")
            return
        self._relevance = relevance
        self._say(f"query {text.strip()!r}: {int((relevance > 0.5).sum())} Gaussians with relevance > 0.5")
        if self.mode.value != "query relevance":
            self.mode.value = "query relevance"  # triggers refresh()
        else:
            self.refresh()

    def _class_query(self, text: str) -> np.ndarray:
        names = self.data.class_names
        if text not in names[1:]:
            raise ValueError(
                f"{text!r} is not one of the classes {names[1:]}; any other word needs the model and its CLIP "
                "text encoder (Scene.view() with clip_path)"
            )
        return np.where(self.data.class_id == names.index(text), self.data.class_conf, 0.0)

    def export(self, path: str | Path) -> Path:
        """Write the visible Gaussians (with their class fields) to ``path`` (atomic); refuses the input file."""
        from ffsplat.render.ply import write_ply

        path = Path(path)
        if self.data.source is not None and path.resolve() == self.data.source.resolve():
            raise ValueError(f"{path}: is the scene being viewed; choose another file")
        if not path.parent.is_dir():
            raise ValueError(f"{path}: folder {path.parent} does not exist")
        keep = torch.from_numpy(np.flatnonzero(self.visible))
        extra = {}
        if self.data.has_classes:
            extra = {"class_id": self.data.class_id[keep.numpy()].astype(np.int32),
                     "class_conf": self.data.class_conf[keep.numpy()].astype(np.float32)}  # fmt: skip
        return write_ply(path, self.data.gaussians.select(keep), extra=extra)

    def _export_clicked(self) -> None:
        try:
            path = self.export(self.export_path.value)
        except (ValueError, OSError) as exc:
            self._say(f"export: {exc}")
            return
        self._say(f"exported {int(self.visible.sum())} Gaussians to {path}")


def serve(data: SceneData, host: str = "127.0.0.1", port: int = 8080, **kwargs) -> None:
    """Serve ``data`` until Ctrl-C; prints the URL and the notes on what is off."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port: expected 0..65535, got {port}")
    for note in data.notes:
        print(f"note: {note}", flush=True)
    try:
        viewer = Viewer(data, host, port, **kwargs)
    except OSError as exc:
        raise InputError(f"--host/--port: cannot serve on {host}:{port}: {exc}") from exc
    print(f"viewer at {viewer.url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
