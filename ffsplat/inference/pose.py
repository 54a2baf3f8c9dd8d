"""Camera poses of photos when the user gives no cameras: COLMAP (through ``pycolmap``) registration.

One entry point, :func:`register_views`::

    register_views(images, intrinsics, baseline=0.3, names=None, config=RegistrationConfig())
        -> Registration(k [V, 3, 3], c2w [V, 4, 4], report)

Pipeline (COLMAP's, run in a temporary database that is deleted afterwards):

1. SIFT per view (COLMAP's CPU SIFT; domain-size pooling on by default, it adds matches on the
   weakly textured walls and floors of indoor scenes; affine-shape estimation optional), the image
   downscaled to ``max_image_size`` and the keypoints scaled back.
2. Exhaustive matching (mutual nearest neighbour + ratio test) with COLMAP's geometric verification
   (essential / fundamental / homography RANSAC with the given intrinsics as priors).
3. Two views: COLMAP's two-view geometry with its relative pose (``compute_relative_pose``), the
   inliers triangulated to report the reprojection error. Three or more: COLMAP's incremental
   mapping (initial pair, absolute-pose registration, triangulation, bundle adjustment), focal
   lengths refined by bundle adjustment only with ``refine_intrinsics``.

Conventions: intrinsics in pixels with the centre of the top-left pixel at (0.5, 0.5) (COLMAP's
convention too, so no shift); poses camera-to-world in OpenCV axes with view 0 at the origin.

Scale rule: photos alone fix a reconstruction only up to scale, so the distance between the camera
centres of views 0 and 1 is set to ``baseline`` metres (for two views the whole translation; for
more, COLMAP's reconstruction is scaled by the same factor). The report says so.

Refusals (:class:`PoseEstimationError`, one message naming the views): views that are the same photo
or show no camera motion, pairs with too few verified inliers (photos that do not overlap), pure
rotations (no baseline), and views the incremental mapper could not register.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


class PoseEstimationError(RuntimeError):
    """The views cannot be registered; the message names the views and what was missing."""


@dataclass
class RegistrationConfig:
    """COLMAP registration settings.

    Fields:
        max_image_size: longest image side (pixels) SIFT runs at; larger photos are downscaled.
        max_num_features: most SIFT keypoints per view.
        peak_threshold: SIFT's difference-of-Gaussian peak threshold (COLMAP's default is 0.0067;
            lower keeps keypoints on low-contrast indoor surfaces).
        domain_size_pooling: COLMAP's DSP-SIFT descriptors (pooled over scales).
        estimate_affine_shape: affine-covariant keypoints (slower; helps strong viewpoint change).
        min_inliers: fewest geometrically verified matches a pair (two views) or the initial pair
            (three or more) needs.
        init_min_tri_angle: smallest median triangulation angle (degrees) of the mapper's initial
            pair (COLMAP's default 16 rejects typical handheld indoor baselines).
        refine_intrinsics: refine each camera's focal length in bundle adjustment (3+ views only).
        num_threads: threads for matching and mapping.
        log_level: COLMAP's glog threshold while registering (0 info, 1 warning, 2 error).
    """

    max_image_size: int = 1600
    max_num_features: int = 8192
    peak_threshold: float = 0.004
    domain_size_pooling: bool = True
    estimate_affine_shape: bool = False
    min_inliers: int = 15
    init_min_tri_angle: float = 8.0
    refine_intrinsics: bool = False
    num_threads: int = 1
    log_level: int = 2


@dataclass
class PairReport:
    """Matching statistics of views ``i`` and ``j`` (0-based)."""

    i: int
    j: int
    matches: int
    inliers: int
    geometry: str  # COLMAP's two-view configuration (CALIBRATED, UNCALIBRATED, PLANAR, ...)


@dataclass
class RegistrationReport:
    """What was registered and how well."""

    method: str  # "two-view geometry" or "incremental mapping"
    keypoints: list[int]  # per view
    pairs: list[PairReport]
    points: int  # triangulated 3D points
    mean_reprojection_error: float  # pixels, over all observations of the triangulated points
    observations: list[int]  # per view: keypoints with a triangulated 3D point
    intrinsics_refined: bool
    scale: str  # the scale rule applied

    def summary(self) -> str:
        inl = ", ".join(f"{p.i}-{p.j}: {p.matches} matches/{p.inliers} inliers" for p in self.pairs)
        return (f"COLMAP {self.method}: {inl}; {self.points} points, reprojection error "
                f"{self.mean_reprojection_error:.2f} px; {self.scale}")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Registration:
    """Registered cameras: intrinsics ``k [V, 3, 3]`` (refined when asked) and ``c2w [V, 4, 4]``."""

    k: np.ndarray
    c2w: np.ndarray
    report: RegistrationReport = field(repr=False)


def default_intrinsics(height: int, width: int, hfov_deg: float = 60.0) -> np.ndarray:
    """Pinhole intrinsics for a horizontal field of view, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def register_views(
    images: list[np.ndarray],
    intrinsics: list[np.ndarray],
    baseline: float = 0.3,
    names: list[str] | None = None,
    config: RegistrationConfig | None = None,
) -> Registration:
    """Register ``V >= 2`` photos with COLMAP.

    Args:
        images: ``V`` arrays ``[H_v, W_v, 3]`` uint8 RGB (sizes may differ).
        intrinsics: ``V`` pixel intrinsics ``[3, 3]`` (priors; the cameras may differ).
        baseline: metres between the camera centres of views 0 and 1 in the output.
        names: view names for messages (default ``view 0``, ``view 1``, ...).
    Returns:
        :class:`Registration` with ``k [V, 3, 3]``, ``c2w [V, 4, 4]`` (view 0 = identity).
    Raises:
        PoseEstimationError: see the module docstring.
        ValueError: bad arguments (fewer than 2 views, mismatched lengths, ``refine_intrinsics``
            with 2 views, non-positive baseline).
    """
    import pycolmap

    cfg = config or RegistrationConfig()
    n = len(images)
    names = list(names) if names is not None else [f"view {i}" for i in range(n)]
    if n < 2 or len(intrinsics) != n or len(names) != n:
        raise ValueError(
            f"register_views needs >= 2 images with one intrinsics matrix and name each, got {n}/{len(intrinsics)}/{len(names)}"
        )
    if not baseline > 0:
        raise ValueError(f"baseline must be positive, got {baseline}")
    if cfg.refine_intrinsics and n < 3:
        raise ValueError("refining intrinsics needs 3 or more views (two views do not constrain the focal length)")
    for i in range(n):
        for j in range(i + 1, n):
            if images[i].shape == images[j].shape and np.array_equal(images[i], images[j]):
                raise PoseEstimationError(
                    f"{names[i]} and {names[j]} are the same photo: there is no camera motion to register"
                )

    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = cfg.log_level  # COLMAP's INFO lines would flood the terminal
    try:
        result = _register(pycolmap, images, intrinsics, names, cfg)
    finally:
        pycolmap.logging.minloglevel = level
    k, c2w, points, error, observations, method, pairs, keypoints = result
    c2w = np.linalg.inv(c2w[0])[None] @ c2w  # view 0 at the origin
    distance = np.linalg.norm(c2w[1, :3, 3])
    if distance < 1e-9:
        raise PoseEstimationError(
            f"{names[0]} and {names[1]} have the same camera centre (a pure rotation): no baseline to scale"
        )
    c2w[:, :3, 3] *= baseline / distance
    scale = (f"translation scaled so that {names[0]} and {names[1]} are {baseline:g} m apart"
             + (" (COLMAP's reconstruction scaled by the same factor)" if n > 2 else ""))  # fmt: skip
    report = RegistrationReport(method, keypoints, pairs, points, error, observations, cfg.refine_intrinsics, scale)
    return Registration(k=k, c2w=c2w, report=report)


def _register(pycolmap, images, intrinsics, names, cfg: RegistrationConfig):
    n = len(images)
    with tempfile.TemporaryDirectory(prefix="ffsplat_colmap_") as tmp:
        db_path = Path(tmp) / "database.db"
        keypoints = _extract(pycolmap, db_path, images, intrinsics, cfg)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = cfg.num_threads
        verification = pycolmap.TwoViewGeometryOptions()
        verification.min_num_inliers = cfg.min_inliers
        verification.compute_relative_pose = True
        pycolmap.match_exhaustive(
            db_path, matching_options=matching, verification_options=verification, device=pycolmap.Device.cpu
        )
        with pycolmap.Database.open(db_path) as db:
            pairs, geometries = _pairs(pycolmap, db, n)
            _refuse_static_pairs(db, geometries, names)
            if n == 2:
                result = _two_view(pycolmap, db, geometries, intrinsics, names, cfg)
            else:
                _refuse_isolated_views(pairs, names, cfg)
        if n > 2:
            result = _incremental(pycolmap, db_path, Path(tmp), pairs, names, cfg)
    return (*result, pairs, keypoints)


def _extract(pycolmap, db_path: Path, images, intrinsics, cfg: RegistrationConfig) -> list[int]:
    """SIFT per view into a new COLMAP database with one PINHOLE camera (the prior) per view."""
    from PIL import Image

    options = pycolmap.FeatureExtractionOptions()
    options.num_threads = 1
    options.sift.max_num_features = cfg.max_num_features
    options.sift.peak_threshold = cfg.peak_threshold
    options.sift.domain_size_pooling = cfg.domain_size_pooling
    options.sift.estimate_affine_shape = cfg.estimate_affine_shape
    extractor = pycolmap.FeatureExtractor.create(options, device=pycolmap.Device.cpu)
    counts = []
    with pycolmap.Database.open(db_path) as db:
        for i, (image, k) in enumerate(zip(images, intrinsics)):
            h, w = image.shape[:2]
            camera = pycolmap.Camera(model="PINHOLE", width=w, height=h, params=[k[0, 0], k[1, 1], k[0, 2], k[1, 2]])
            camera.has_prior_focal_length = True
            camera.camera_id = db.write_camera(camera)
            rig = pycolmap.Rig()
            rig.add_ref_sensor(camera.sensor_id)
            rig_id = db.write_rig(rig)
            image_id = db.write_image(pycolmap.Image(name=f"view_{i:03d}", camera_id=camera.camera_id))
            frame = pycolmap.Frame()
            frame.rig_id = rig_id
            frame.add_data_id(pycolmap.data_t(sensor_id=camera.sensor_id, id=image_id))
            stored = db.read_image(image_id)
            stored.frame_id = db.write_frame(frame)
            db.update_image(stored)
            gray = Image.fromarray(image).convert("L")
            s = min(1.0, cfg.max_image_size / max(h, w))
            if s < 1.0:
                gray = gray.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
                s = gray.width / w
            kp, desc = extractor.extract(pycolmap.Bitmap.from_array(np.asarray(gray)))
            kp = pycolmap.keypoints_to_matrix(kp).astype(np.float32)
            kp /= s  # x, y and the affine shape scale with the image (pixel centres at +0.5)
            db.write_keypoints(image_id, kp)
            db.write_descriptors(image_id, desc)
            counts.append(len(kp))
    return counts


def _pairs(pycolmap, db, n: int):
    """Per pair: raw matches, verified inliers and configuration; geometries keyed by (i, j)."""
    ids, geometries = db.read_two_view_geometries()
    by_pair = {}
    for pair_id, geometry in zip(ids, geometries):
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        by_pair[(a - 1, b - 1)] = geometry
    reports = []
    for i in range(n):
        for j in range(i + 1, n):
            matches = len(db.read_matches(i + 1, j + 1)) if db.exists_matches(i + 1, j + 1) else 0
            g = by_pair.get((i, j))
            inliers = len(g.inlier_matches) if g is not None else 0
            reports.append(
                PairReport(i, j, matches, inliers, _config_name(pycolmap, g) if g is not None else "UNDEFINED")
            )
    return reports, by_pair


def _config_name(pycolmap, geometry) -> str:
    return pycolmap.TwoViewGeometryConfiguration(int(geometry.config)).name


def _refuse_static_pairs(db, geometries, names) -> None:
    """Pairs whose verified matches did not move (a re-saved or cropped copy of the same photo)."""
    for (i, j), g in geometries.items():
        if len(g.inlier_matches) < 8:
            continue
        a = db.read_keypoints(i + 1)[g.inlier_matches[:, 0], :2]
        b = db.read_keypoints(j + 1)[g.inlier_matches[:, 1], :2]
        if np.median(np.linalg.norm(a - b, axis=1)) < 1.0:
            raise PoseEstimationError(
                f"{names[i]} and {names[j]} show no camera motion (matches do not move): they are the same photo"
            )


def _refuse_isolated_views(pairs: list[PairReport], names, cfg: RegistrationConfig) -> None:
    """Views with fewer than ``min_inliers`` verified matches to every other view cannot register."""
    best = {i: max(p.inliers for p in pairs if i in (p.i, p.j)) for i in range(len(names))}
    isolated = [i for i, b in best.items() if b < cfg.min_inliers]
    if isolated:
        detail = ", ".join(f"{names[i]} ({best[i]} verified matches with any other view)" for i in isolated)
        raise PoseEstimationError(
            f"COLMAP could not register {len(isolated)} of {len(names)} views: {detail}, need {cfg.min_inliers}; "
            "they do not overlap the others. Give --cameras or drop them"
        )


def _two_view(pycolmap, db, geometries, intrinsics, names, cfg: RegistrationConfig):
    g = geometries.get((0, 1))
    inliers = 0 if g is None else len(g.inlier_matches)
    if g is None or inliers < cfg.min_inliers:
        matches = len(db.read_matches(1, 2)) if db.exists_matches(1, 2) else 0
        raise PoseEstimationError(
            f"{names[0]} and {names[1]} could not be registered: {matches} feature matches, {inliers} geometrically verified "
            f"(need {cfg.min_inliers}); the photos do not overlap enough. Give --cameras"
        )
    config = _config_name(pycolmap, g)
    if config in ("PANORAMIC", "PLANAR_OR_PANORAMIC"):
        raise PoseEstimationError(
            f"{names[0]} and {names[1]} are related by a pure rotation (no baseline between the cameras); give --cameras"
        )
    if config in ("WATERMARK", "DEGENERATE", "UNDEFINED"):
        raise PoseEstimationError(
            f"{names[0]} and {names[1]} could not be registered: COLMAP found a {config} two-view geometry"
        )
    rel = np.eye(4)
    rel[:3] = g.cam2_from_cam1.matrix()  # x1 = R x0 + t
    k = np.stack([np.asarray(x, dtype=np.float64) for x in intrinsics])
    pairs = g.inlier_matches
    if config != "CALIBRATED":
        # A homography (PLANAR: walls, floors, small baselines) or fundamental-matrix (UNCALIBRATED)
        # decomposition fixes the translation poorly; re-estimate the pose from the essential matrix
        # over all matches (COLMAP's LO-RANSAC, tangent Sampson error) with the known intrinsics.
        pairs = db.read_matches(1, 2)
        kp0, kp1 = db.read_keypoints(1)[pairs[:, 0], :2], db.read_keypoints(2)[pairs[:, 1], :2]
        cams = [db.read_camera(1), db.read_camera(2)]
        ransac = pycolmap.RANSACOptions()
        ransac.max_error = 2.0
        ransac.random_seed = 0
        found = pycolmap.estimate_relative_pose(
            cams[0], kp0.astype(np.float64), cams[1], kp1.astype(np.float64), ransac
        )
        if found is None or int(found["num_inliers"]) < cfg.min_inliers:
            raise PoseEstimationError(
                f"{names[0]} and {names[1]} could not be registered: COLMAP found a {config} two-view geometry and only "
                f"{0 if found is None else int(found['num_inliers'])} matches agree on an essential matrix (need {cfg.min_inliers})"
            )
        rel[:3] = found["cam2_from_cam1"].matrix()
        pairs = pairs[np.asarray(found["inlier_mask"], dtype=bool)]
        config = f"{config}, pose from the essential matrix"
    x0 = db.read_keypoints(1)[pairs[:, 0], :2].astype(np.float64)
    x1 = db.read_keypoints(2)[pairs[:, 1], :2].astype(np.float64)
    points, error, angle = triangulate_pair(k[0], k[1], rel, x0, x1)
    if points < cfg.min_inliers:
        raise PoseEstimationError(
            f"{names[0]} and {names[1]} could not be registered: only {points} of {inliers} inliers triangulate in front of both cameras"
        )
    c2w = np.stack([np.eye(4), np.linalg.inv(rel)])
    return (
        k,
        c2w,
        points,
        error,
        [points, points],
        f"two-view geometry ({config}, median triangulation angle {angle:.1f} deg)",
    )


def triangulate_pair(
    k0: np.ndarray, k1: np.ndarray, cam1_from_cam0: np.ndarray, x0: np.ndarray, x1: np.ndarray
) -> tuple[int, float, float]:
    """Linear (DLT) triangulation of matched pixels ``x0, x1 [N, 2]``.

    Returns the number of points in front of both cameras, their mean reprojection error in pixels
    (over both views) and their median triangulation angle in degrees.
    """
    p0 = k0 @ np.eye(4)[:3]
    p1 = k1 @ cam1_from_cam0[:3]
    a = np.stack(
        [x0[:, :1] * p0[2] - p0[0], x0[:, 1:] * p0[2] - p0[1], x1[:, :1] * p1[2] - p1[0], x1[:, 1:] * p1[2] - p1[1]], 1
    )
    xh = np.linalg.svd(a)[2][:, -1]  # [N, 4]
    xh = xh / xh[:, 3:]
    c0, c1 = xh @ np.eye(4)[:3].T, xh @ cam1_from_cam0[:3].T
    front = (c0[:, 2] > 0) & (c1[:, 2] > 0)
    if not front.any():
        return 0, float("nan"), 0.0
    r0 = xh[front] @ p0.T
    r1 = xh[front] @ p1.T
    err0 = np.linalg.norm(r0[:, :2] / r0[:, 2:] - x0[front], axis=1)
    err1 = np.linalg.norm(r1[:, :2] / r1[:, 2:] - x1[front], axis=1)
    centre1 = -cam1_from_cam0[:3, :3].T @ cam1_from_cam0[:3, 3]
    rays0, rays1 = xh[front, :3], xh[front, :3] - centre1
    cos = (rays0 * rays1).sum(1) / np.linalg.norm(rays0, axis=1) / np.linalg.norm(rays1, axis=1)
    angle = float(np.degrees(np.median(np.arccos(np.clip(cos, -1.0, 1.0)))))
    return int(front.sum()), float(np.concatenate([err0, err1]).mean()), angle


def _incremental(pycolmap, db_path: Path, tmp: Path, pairs: list[PairReport], names, cfg: RegistrationConfig):
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.min_num_matches = cfg.min_inliers
    options.min_model_size = 2
    options.extract_colors = False
    options.ba_refine_focal_length = cfg.refine_intrinsics
    options.ba_refine_principal_point = False
    options.ba_refine_extra_params = False
    options.random_seed = 0
    options.mapper.init_min_num_inliers = cfg.min_inliers
    options.mapper.init_min_tri_angle = cfg.init_min_tri_angle
    options.mapper.abs_pose_min_num_inliers = cfg.min_inliers
    options.mapper.abs_pose_refine_focal_length = cfg.refine_intrinsics
    options.mapper.abs_pose_refine_extra_params = False
    options.mapper.random_seed = 0
    out = tmp / "sparse"
    out.mkdir()
    reconstructions = pycolmap.incremental_mapping(db_path, tmp, out, options)
    best = max(reconstructions.values(), key=lambda r: r.num_reg_images(), default=None)
    by_name = {} if best is None else {image.name: image for image in best.images.values() if image.has_pose}
    missing = [i for i in range(len(names)) if f"view_{i:03d}" not in by_name]
    if missing:
        links = {i: max((p.inliers for p in pairs if i in (p.i, p.j)), default=0) for i in missing}
        detail = ", ".join(f"{names[i]} ({links[i]} verified matches with any other view)" for i in missing)
        models = len(reconstructions)
        raise PoseEstimationError(
            f"COLMAP could not register {len(missing)} of {len(names)} views: {detail}; its mapper could not add them to the "
            f"reconstruction of the others (COLMAP built {models} model{'s' if models != 1 else ''}). Give --cameras, drop them or add views in between"
        )
    ks, c2ws, observations = [], [], []
    for i in range(len(names)):
        image = by_name[f"view_{i:03d}"]
        ks.append(np.asarray(best.cameras[image.camera_id].calibration_matrix(), dtype=np.float64))
        w2c = np.eye(4)
        w2c[:3] = image.cam_from_world().matrix()
        c2ws.append(np.linalg.inv(w2c))
        observations.append(int(image.num_points3D))
    return (
        np.stack(ks),
        np.stack(c2ws),
        best.num_points3D(),
        float(best.compute_mean_reprojection_error()),
        observations,
        "incremental mapping",
    )
