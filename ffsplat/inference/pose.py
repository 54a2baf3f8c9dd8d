"""Relative pose of two photos when the user gives no cameras: SIFT matches, the essential matrix
(MAGSAC, OpenCV's USAC) and its decomposition with OpenCV.

The result is camera-to-world poses in ffsplat's convention (OpenCV axes; view 0 at the origin
looking down +z). A two-view essential matrix fixes the translation only up to scale, so the
baseline is set to ``baseline`` metres (what the model saw in training) and the caller says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


class PoseEstimationError(RuntimeError):
    """The views cannot be registered (too few matches or inliers: they do not overlap enough)."""


@dataclass
class RelativePose:
    """Camera-to-world poses of the two views (view 0 = identity) and match statistics."""

    c2w: np.ndarray  # [2, 4, 4]
    matches: int
    inliers: int


def default_intrinsics(height: int, width: int, hfov_deg: float = 60.0) -> np.ndarray:
    """Pinhole intrinsics for a horizontal field of view, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def estimate_relative_pose(
    image0: np.ndarray,
    image1: np.ndarray,
    k0: np.ndarray,
    k1: np.ndarray,
    baseline: float = 0.3,
    min_matches: int = 30,
    min_inliers: int = 20,
) -> RelativePose:
    """Pose of view 1 relative to view 0.

    Args:
        image0, image1: ``[H, W, 3]`` uint8 RGB.
        k0, k1: ``[3, 3]`` pixel intrinsics (pixel centres at +0.5, as everywhere in ffsplat).
        baseline: metres between the two camera centres in the output.
    Raises:
        PoseEstimationError: fewer than ``min_matches`` ratio-test matches or ``min_inliers``
            essential-matrix inliers, or a degenerate (pure rotation) solution.
    """
    # A low contrast threshold keeps keypoints on weakly textured indoor surfaces (walls, floors).
    sift = cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.01)
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (image0, image1)]
    (kp0, des0), (kp1, des1) = (sift.detectAndCompute(g, None) for g in gray)
    if des0 is None or des1 is None or len(kp0) < 8 or len(kp1) < 8:
        raise PoseEstimationError("too few features in the views to estimate their relative pose")
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des0, des1, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) < min_matches:
        raise PoseEstimationError(
            f"the views do not overlap enough: {len(good)} feature matches (need {min_matches}); give --cameras"
        )
    # OpenCV's keypoints use integer pixel centres; ours sit at +0.5.
    p0 = np.float64([kp0[m.queryIdx].pt for m in good]) + 0.5
    p1 = np.float64([kp1[m.trainIdx].pt for m in good]) + 0.5
    n0 = cv2.undistortPoints(p0[:, None], k0, None)[:, 0]
    n1 = cv2.undistortPoints(p1[:, None], k1, None)[:, 0]
    pixel = 2.0 / (k0[0, 0] + k1[0, 0])  # one pixel in normalised image coordinates
    e, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.USAC_MAGSAC, prob=0.9999, threshold=pixel)
    if e is None or e.shape != (3, 3):
        raise PoseEstimationError("no essential matrix fits the matches; the views may not overlap")
    inliers, rot, trans, mask = cv2.recoverPose(e, n0, n1, np.eye(3), mask=mask)
    if inliers < min_inliers:
        raise PoseEstimationError(f"only {inliers} matches agree on a relative pose (need {min_inliers}); give --cameras")
    norm = np.linalg.norm(trans)
    if norm < 1e-8:
        raise PoseEstimationError("degenerate relative pose (no translation between the views)")
    # recoverPose gives x1 = R x0 + t (world = camera 0): camera 1's world-to-camera is [R | t].
    w2c1 = np.eye(4)
    w2c1[:3, :3], w2c1[:3, 3] = rot, trans[:, 0] / norm * baseline
    c2w = np.stack([np.eye(4), np.linalg.inv(w2c1)])
    return RelativePose(c2w=c2w, matches=len(good), inliers=int(inliers))
