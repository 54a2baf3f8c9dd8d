"""Read and write one Gaussian scene as a .ply file in the Inria 3DGS layout.

Layout: a single ``vertex`` element, one row per Gaussian, all properties ``float32`` except
``extra`` ones, in this order::

    x y z                      means, world space
    nx ny nz                   zeros (the Inria exporter writes them; viewers ignore them)
    f_dc_0 f_dc_1 f_dc_2       sh[:, 0, :] (the degree-0 coefficient of R, G, B)
    f_rest_0 .. f_rest_{3(K-1)-1}
                               sh[:, 1:, :] channel-major, as Inria's exporter writes it:
                               f_rest_0 .. f_rest_{K-2} are the red coefficients 1..K-1, then
                               green, then blue (sh[:, 1:, :].transpose(1, 2).reshape(N, -1))
    opacity                    logit(opacity)
    scale_0 scale_1 scale_2    log(scale)
    rot_0 rot_1 rot_2 rot_3    quaternion (w, x, y, z), written as given
    <name>_0 .. <name>_{C-1}   each semantic feature field ``name`` of C channels, in order
    <extra> ...                scalar per-Gaussian extras (int32, uint8 or float32)

Scales and rotations are world-space (local -> world), exactly as :class:`ffsplat.core.types.Gaussians`
holds them, so a viewer that builds ``R S S^T R^T`` from them renders what ffsplat renders. (Feed-
forward exporters such as MVSplat's wrote the per-view camera-frame rotations instead, which is why
their .ply files look streaked.)

Three comment lines right after ``element vertex N`` describe what is not Inria's, so reading needs
no guessing::

    comment ffsplat sh_degree 3
    comment ffsplat features seg:16 lang:32
    comment ffsplat extra class_id class_conf

They go after the element line because the Inria SIBR viewer expects ``element vertex N`` on the
third header line. SIBR also reads fixed 62-float records, so it opens only SH-degree-3 files
without features or extras; SuperSplat and gsplat's viewer parse the header and ignore the
properties they do not know.

Precision: opacity logits and log-scales are computed in float64 from the float32 values and
rounded to float32; reading inverts them in float64 the same way. Opacities are clamped to
``[1e-6, 1 - 1e-6]`` (in float32) before the logit, so opacities of exactly 0 or 1 read back as
1e-6 and ``1 - 1e-6``. Everything else round-trips exactly, opacity and scale to within about
``6e-8 * max(1, |log value|)`` relative, and writing what :func:`read_ply` returned gives a
byte-identical file.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement, PlyParseError
from torch import Tensor

from ffsplat.core.atomic import atomic_open
from ffsplat.core.types import Gaussians

__all__ = ["PlyError", "read_ply", "write_ply"]

OPACITY_EPS = 1e-6
EXTRA_DTYPES = (np.dtype(np.int32), np.dtype(np.uint8), np.dtype(np.float32))
_COMMENT_PREFIX = "ffsplat"
_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_HEADER_BYTES = 1 << 20
_PLY_TYPE_SIZES = {
    "char": 1, "int8": 1, "uchar": 1, "uint8": 1,
    "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
    "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4,
    "double": 8, "float64": 8,
}  # fmt: skip


class PlyError(ValueError):
    """A .ply file is missing, malformed, truncated or lacks Gaussian properties."""


# ---------------------------------------------------------------- property names
def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}_{i}" for i in range(count)]


def _gaussian_property_groups(sh_degree: int) -> dict[str, list[str]]:
    """Property names of the Inria layout (without normals), grouped by Gaussians field."""
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return {
        "means": ["x", "y", "z"],
        "f_dc": _names("f_dc", 3),
        "f_rest": _names("f_rest", num_rest),
        "opacity": ["opacity"],
        "scales": _names("scale", 3),
        "rotations": _names("rot", 4),
    }


# ---------------------------------------------------------------- writing
def write_ply(
    path: str | os.PathLike,
    gaussians: Gaussians,
    extra: dict[str, np.ndarray | Tensor] | None = None,
    binary: bool = True,
) -> Path:
    """Write one scene atomically in the layout described in the module docstring.

    Args:
        path: target file; its directory must exist and be writable. The file is written to a
            temporary file next to it, fsynced and renamed over ``path``, so ``path`` is either
            the complete new file or untouched.
        gaussians: one unbatched scene: means ``[N, 3]``, scales ``[N, 3]`` (linear, world
            space), rotations ``[N, 4]`` (wxyz, world space), opacities ``[N]``, sh ``[N, K, 3]``,
            features ``{name: [N, C]}``. Values are cast to float32.
        extra: per-Gaussian scalars ``{name: [N]}`` (int32, uint8 or float32), for example
            ``class_id`` and ``class_conf``; written after the features with their own dtype.
        binary: binary little-endian (default) or ASCII.
    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    Raises:
        ValueError: batched Gaussians, bad extra arrays, or clashing/invalid property names.
        FileNotFoundError / PermissionError: the directory of ``path`` is missing / not writable.
    """
    path = Path(path)
    if gaussians.means.dim() != 2:
        raise ValueError(
            f"write_ply writes one scene, got Gaussians with batch shape {tuple(gaussians.batch_shape)}; "
            "index the batch first, e.g. write_ply(path, gaussians[0])"
        )
    vertex = _vertex_element(gaussians, extra or {})
    with atomic_open(path) as stream:
        PlyData([vertex], text=not binary, byte_order="<").write(stream)
    return path


def _vertex_element(gaussians: Gaussians, extra: dict[str, np.ndarray | Tensor]) -> PlyElement:
    g = gaussians.detach().to("cpu", torch.float32)
    n = g.num_gaussians
    groups = _gaussian_property_groups(g.sh_degree)
    opacity_logits = torch.logit(g.opacities.clamp(OPACITY_EPS, 1 - OPACITY_EPS).double()).float()
    columns = [
        (groups["means"], g.means),
        (["nx", "ny", "nz"], torch.zeros_like(g.means)),
        (groups["f_dc"], g.sh[:, 0, :]),
        (groups["f_rest"], g.sh[:, 1:, :].transpose(1, 2).reshape(n, len(groups["f_rest"]))),
        (groups["opacity"], opacity_logits[:, None]),
        (groups["scales"], g.scales.double().log().float()),
        (groups["rotations"], g.rotations),
    ]
    columns += [(_names(name, feat.shape[-1]), feat) for name, feat in g.features.items()]
    extras = {name: _extra_array(name, value, n) for name, value in extra.items()}

    float_names = [name for names, _ in columns for name in names]
    _check_names([*g.features, *extras], float_names + list(extras))
    dtype = [(name, "<f4") for name in float_names]
    dtype += [(name, arr.dtype.newbyteorder("<")) for name, arr in extras.items()]
    data = np.empty(n, dtype=dtype)
    for names, values in columns:
        values = values.numpy()
        for i, name in enumerate(names):
            data[name] = values[:, i]
    for name, arr in extras.items():
        data[name] = arr

    features = [f"{name}:{dim}" for name, dim in g.feature_dims.items()]
    comments = [
        f"{_COMMENT_PREFIX} sh_degree {g.sh_degree}",
        " ".join([_COMMENT_PREFIX, "features", *features]),
        " ".join([_COMMENT_PREFIX, "extra", *extras]),
    ]
    return PlyElement.describe(data, "vertex", comments=comments)


def _extra_array(name: str, value: np.ndarray | Tensor, n: int) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"extra[{name!r}] must have shape ({n},) (one scalar per Gaussian), got {arr.shape}")
    if arr.dtype not in EXTRA_DTYPES:
        supported = ", ".join(str(d) for d in EXTRA_DTYPES)
        raise ValueError(f"extra[{name!r}] has dtype {arr.dtype}; supported: {supported} (cast it first)")
    return arr


def _check_names(user_names: list[str], property_names: list[str]) -> None:
    for name in user_names:
        if not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"feature/extra name {name!r} must match {_NAME_PATTERN.pattern} to be a PLY property")
    clashes = sorted(name for name, count in Counter(property_names).items() if count > 1)
    if clashes:
        raise ValueError(f"feature/extra names produce duplicate PLY properties: {clashes}")


# ---------------------------------------------------------------- reading
def read_ply(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Gaussians, dict[str, np.ndarray]]:
    """Read a scene written by :func:`write_ply`, or a plain Inria 3DGS .ply.

    A plain file (no ``ffsplat`` comments) gives no features and no extras; its SH degree is
    inferred from the number of ``f_rest_*`` properties, which must be ``3 * ((d + 1) ** 2 - 1)``.
    Normals are not required.

    Args:
        path: the .ply file.
        device: device of the returned tensors.
    Returns:
        ``(gaussians, extra)``: unbatched float32 Gaussians (means ``[N, 3]``, scales ``[N, 3]``,
        rotations ``[N, 4]``, opacities ``[N]``, sh ``[N, K, 3]``, features ``{name: [N, C]}``)
        and the extra arrays ``{name: [N]}`` with their stored dtype.
    Raises:
        PlyError: the file is missing, not PLY, truncated, has no ``vertex`` element or lacks
            required properties; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise PlyError(f"{path}: no such file (expected a Gaussian splatting .ply)")
    _check_magic_and_size(path)
    try:
        ply = PlyData.read(str(path))
    except (PlyParseError, ValueError, OSError) as exc:
        raise PlyError(f"{path}: cannot parse PLY: {exc}") from exc
    if "vertex" not in ply:
        found = [element.name for element in ply.elements]
        raise PlyError(f"{path}: no 'vertex' element (found {found}); expected one row per Gaussian")
    vertex = ply["vertex"]
    meta = _read_comments(path, [*ply.comments, *vertex.comments])
    available = {prop.name for prop in vertex.properties}

    sh_degree = _sh_degree(path, meta, available)
    groups = _gaussian_property_groups(sh_degree)
    features = _feature_dims(path, meta.get("features", []))
    extra_names = meta.get("extra", [])
    required = [name for names in groups.values() for name in names]
    required += [name for field, dim in features.items() for name in _names(field, dim)]
    required += extra_names
    missing = [name for name in required if name not in available]
    if missing:
        raise PlyError(f"{path}: 'vertex' element lacks required properties {missing}")

    def columns(names: list[str]) -> np.ndarray:  # [N, len(names)] float32
        if not names:
            return np.zeros((vertex.count, 0), np.float32)
        return np.stack([np.asarray(vertex[name], dtype=np.float32) for name in names], axis=-1)

    def tensor(array: np.ndarray | Tensor) -> Tensor:
        return torch.as_tensor(array).to(device)

    n, k = vertex.count, (sh_degree + 1) ** 2
    f_rest = columns(groups["f_rest"]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([columns(groups["f_dc"])[:, None, :], f_rest], axis=1)
    opacity_logits = torch.from_numpy(columns(groups["opacity"])[:, 0])
    log_scales = torch.from_numpy(columns(groups["scales"]))
    gaussians = Gaussians(
        means=tensor(columns(groups["means"])),
        scales=tensor(log_scales.double().exp().float()),
        rotations=tensor(columns(groups["rotations"])),
        opacities=tensor(opacity_logits.double().sigmoid().float()),
        sh=tensor(sh),
        features={field: tensor(columns(_names(field, dim))) for field, dim in features.items()},
    )
    extras = {name: np.array(vertex[name], dtype=vertex[name].dtype.newbyteorder("=")) for name in extra_names}
    return gaussians, extras


def _check_magic_and_size(path: Path) -> None:
    """Raise unless the file starts with a PLY header and (if binary) holds the bytes it promises."""
    with path.open("rb") as stream:
        head = stream.read(_MAX_HEADER_BYTES)
    if not re.match(rb"ply(\r\n|\r|\n)", head):
        raise PlyError(f"{path}: not a PLY file (expected the first line to be 'ply')")
    end = re.search(rb"[\r\n]end_header(\r\n|\r|\n)", head)
    if end is None:
        raise PlyError(f"{path}: PLY header has no 'end_header' line in its first {_MAX_HEADER_BYTES} bytes")
    expected = _expected_size(head[: end.start()].decode("ascii", errors="replace").splitlines(), end.end())
    actual = path.stat().st_size
    if expected is not None and actual < expected:
        raise PlyError(f"{path}: truncated PLY: the header promises {expected} bytes, the file has {actual}")


def _expected_size(header_lines: list[str], header_bytes: int) -> int | None:
    """File size a binary PLY header implies; ``None`` for ASCII, list properties or odd headers."""
    total, count, binary = header_bytes, 0, False
    try:
        for line in header_lines:
            words = line.split()
            if words[:1] == ["format"]:
                binary = words[1] in ("binary_little_endian", "binary_big_endian")
            elif words[:1] == ["element"]:
                count = int(words[2])
            elif words[:1] == ["property"]:
                total += count * _PLY_TYPE_SIZES[words[1]]  # KeyError for 'list': size unknown
    except (IndexError, KeyError, ValueError):
        return None  # plyfile reports malformed headers
    return total if binary else None


def _read_comments(path: Path, comments: list[str]) -> dict[str, list[str]]:
    """``comment ffsplat <key> <values...>`` lines as ``{key: values}``."""
    meta = {}
    for comment in comments:
        words = comment.split()
        if words[:1] != [_COMMENT_PREFIX]:
            continue
        if len(words) < 2:
            raise PlyError(f"{path}: malformed header comment {comment!r}; expected 'ffsplat <key> <values...>'")
        meta[words[1]] = words[2:]
    return meta


def _sh_degree(path: Path, meta: dict[str, list[str]], available: set[str]) -> int:
    num_rest = sum(1 for name in available if re.fullmatch(r"f_rest_\d+", name))
    degree = math.isqrt(num_rest // 3 + 1) - 1
    if num_rest != 3 * ((degree + 1) ** 2 - 1):
        raise PlyError(
            f"{path}: {num_rest} f_rest_* properties; expected 3 * ((d + 1) ** 2 - 1) for an SH degree d "
            "(0, 9, 24, 45, ...)"
        )
    if "sh_degree" in meta:
        stated = " ".join(meta["sh_degree"])
        if stated != str(degree):
            raise PlyError(f"{path}: header says 'ffsplat sh_degree {stated}' but has {num_rest} f_rest_* properties")
    return degree


def _feature_dims(path: Path, items: list[str]) -> dict[str, int]:
    """Parse ``name:C`` items of the ``ffsplat features`` comment."""
    dims = {}
    for item in items:
        name, _, dim = item.partition(":")
        if not name or not dim.isdigit():
            raise PlyError(f"{path}: malformed feature entry {item!r} in 'ffsplat features'; expected name:channels")
        dims[name] = int(dim)
    return dims
