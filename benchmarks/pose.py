"""Pose-free registration on real pairs: COLMAP (``ffsplat.inference.pose.register_views``) against
the old hand-rolled OpenCV path, side by side on the same pairs, in one run.

    python benchmarks/pose.py                      # HoloLens office, gaps 5/10/20, every 20th frame
    python benchmarks/pose.py --gaps 10 --stride 40 --max-pairs 3

Data: the real HoloLens RGB-D office sequence in ``../shared/data/hololens-office`` (540x360,
ground-truth camera-to-world poses and calibrated intrinsics). Pairs are frames ``(s, s + gap)``
for ``s = 0, stride, 2 * stride, ...``. Both methods get the calibrated intrinsics.

Metrics as SuperGlue (Sarlin et al., CVPR 2020) reports them: rotation error (angle of R_est^T R_gt),
translation-direction error (angle between the translations, taken as min(e, 180 - e) because an
essential matrix fixes the direction only up to sign), pose error = max of the two, and the AUC of
the pose-error recall curve up to 5/10/20 degrees. A refused pair counts as an infinite error
(recall never reaches it). Note: SuperGlue's numbers are on ScanNet (1296x968 resized to 640x480);
this is a different, smaller sequence (HoloLens, 540x360), so they are a point of reference only.

Prints one JSON object (machine, settings, per-method summary and per-pair rows).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from ffsplat.core.benchmarking import machine  # noqa: E402
from ffsplat.inference.pose import PoseEstimationError, RegistrationConfig, register_views  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hololens-office"


# --- The OLD baseline: the hand-rolled OpenCV path that ffsplat/inference/pose.py used before COLMAP.
# Kept here only so that the benchmark compares against it in the same run; not part of the library.
def old_opencv_relative_pose(image0, image1, k0, k1, min_matches: int = 30, min_inliers: int = 20) -> np.ndarray:
    """OLD BASELINE. SIFT (OpenCV) + ratio test + MAGSAC essential matrix + recoverPose.

    Returns camera 1's ``cam1_from_cam0 [4, 4]`` (unit translation) or raises PoseEstimationError.
    """
    import cv2

    sift = cv2.SIFT_create(nfeatures=4000, contrastThreshold=0.01)
    gray = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in (image0, image1)]
    (kp0, des0), (kp1, des1) = (sift.detectAndCompute(g, None) for g in gray)
    if des0 is None or des1 is None or len(kp0) < 8 or len(kp1) < 8:
        raise PoseEstimationError("too few features")
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(des0, des1, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) < min_matches:
        raise PoseEstimationError(f"{len(good)} matches (need {min_matches})")
    p0 = np.float64([kp0[m.queryIdx].pt for m in good]) + 0.5
    p1 = np.float64([kp1[m.trainIdx].pt for m in good]) + 0.5
    n0 = cv2.undistortPoints(p0[:, None], k0, None)[:, 0]
    n1 = cv2.undistortPoints(p1[:, None], k1, None)[:, 0]
    pixel = 2.0 / (k0[0, 0] + k1[0, 0])
    e, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.USAC_MAGSAC, prob=0.9999, threshold=pixel)
    if e is None or e.shape != (3, 3):
        raise PoseEstimationError("no essential matrix")
    inliers, rot, trans, mask = cv2.recoverPose(e, n0, n1, np.eye(3), mask=mask)
    if inliers < min_inliers:
        raise PoseEstimationError(f"{inliers} inliers (need {min_inliers})")
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, trans[:, 0] / max(np.linalg.norm(trans), 1e-12)
    return out


# --- Metrics (SuperGlue's definitions).
def rotation_error_deg(r_est: np.ndarray, r_gt: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r_est.T @ r_gt) - 1) / 2, -1.0, 1.0)))


def translation_error_deg(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    cos = t_est @ t_gt / max(np.linalg.norm(t_est) * np.linalg.norm(t_gt), 1e-12)
    e = math.degrees(math.acos(np.clip(cos, -1.0, 1.0)))
    return min(e, 180.0 - e)  # an essential matrix fixes the direction up to sign


def pose_auc(errors: list[float], thresholds=(5.0, 10.0, 20.0)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised to [0, 1]."""
    errors = np.sort(np.asarray(errors, dtype=np.float64))
    recall = np.arange(1, len(errors) + 1) / len(errors)
    errors, recall = np.r_[0.0, errors], np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.trapezoid(r, x=e) / t))
    return aucs


def load(frame: int):
    from PIL import Image

    image = np.asarray(Image.open(DATA / "color" / f"{frame}.jpg").convert("RGB"))
    return image, np.loadtxt(DATA / "pose" / f"{frame}.txt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gaps", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--stride", type=int, default=20, help="frames between the first frames of consecutive pairs")
    p.add_argument("--max-pairs", type=int, default=0, help="at most this many pairs per gap (0: all)")
    p.add_argument(
        "--multiview",
        type=int,
        nargs="*",
        default=[],
        metavar="FIRST",
        help="instead of pairs: register --views frames FIRST, FIRST+gap, ... at once (COLMAP only)",
    )
    p.add_argument("--views", type=int, default=8, help="views per --multiview set")
    args = p.parse_args()
    if args.multiview:
        return multiview(args)
    if not DATA.exists():
        sys.exit(f"error: HoloLens data not found at {DATA}")
    k = np.loadtxt(DATA / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    frames = len(list((DATA / "color").glob("*.jpg")))
    cfg = RegistrationConfig()
    rows = []
    for gap in args.gaps:
        starts = list(range(0, frames - gap, args.stride))
        if args.max_pairs:
            starts = starts[: args.max_pairs]
        for s in starts:
            (im0, p0), (im1, p1) = load(s), load(s + gap)
            gt = np.linalg.inv(p1) @ p0  # cam1_from_cam0
            row = {"gap": gap, "frames": [s, s + gap], "gt_rotation_deg": rotation_error_deg(np.eye(3), gt[:3, :3])}
            for method in ("colmap", "opencv_old"):
                t0 = time.perf_counter()
                try:
                    if method == "colmap":
                        reg = register_views([im0, im1], [k, k], names=[f"{s}.jpg", f"{s + gap}.jpg"], config=cfg)
                        est = np.linalg.inv(reg.c2w[1])
                        extra = {"inliers": reg.report.pairs[0].inliers, "reproj_px": reg.report.mean_reprojection_error,
                                 "method": reg.report.method}  # fmt: skip
                    else:
                        est, extra = old_opencv_relative_pose(im0, im1, k, k), {}
                    er, et = rotation_error_deg(est[:3, :3], gt[:3, :3]), translation_error_deg(est[:3, 3], gt[:3, 3])
                    row[method] = {"rot_err": er, "t_err": et, "pose_err": max(er, et), **extra}
                except PoseEstimationError as exc:
                    row[method] = {"refused": str(exc)[:160], "pose_err": float("inf")}
                row[method]["seconds"] = time.perf_counter() - t0
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    summary = {}
    for method in ("colmap", "opencv_old"):
        per = {}
        for gap in [*args.gaps, "all"]:
            sel = [r[method] for r in rows if gap == "all" or r["gap"] == gap]
            errs = [r["pose_err"] for r in sel]
            ok = [r for r in sel if "refused" not in r]
            auc = pose_auc(errs)
            per[str(gap)] = {
                "pairs": len(sel), "registered": len(ok),
                "auc@5": auc[0], "auc@10": auc[1], "auc@20": auc[2],
                "median_rot_err": float(np.median([r["rot_err"] for r in ok])) if ok else None,
                "median_t_err": float(np.median([r["t_err"] for r in ok])) if ok else None,
                "mean_seconds": float(np.mean([r["seconds"] for r in sel])),
            }  # fmt: skip
        summary[method] = per
    settings = {"data": "hololens-office 540x360", "gaps": args.gaps, "stride": args.stride, "colmap": cfg.__dict__}
    print(json.dumps({"machine": machine(), "settings": settings, "summary": summary, "pairs": rows}))


def multiview(args) -> None:
    """Register ``--views`` frames ``s, s + gap, ...`` in one COLMAP run per start ``s``: per-view
    rotation / translation-direction error of each camera relative to view 0."""
    k = np.loadtxt(DATA / "intrinsic" / "intrinsic_color.txt")[:3, :3]
    gap, results = args.gaps[0], []
    for s in args.multiview:
        frames = [s + gap * i for i in range(args.views)]
        loaded = [load(f) for f in frames]
        t0 = time.perf_counter()
        try:
            reg = register_views([im for im, _ in loaded], [k] * len(frames), names=[f"{f}.jpg" for f in frames])
        except PoseEstimationError as exc:
            results.append({"frames": frames, "refused": str(exc), "seconds": time.perf_counter() - t0})
            continue
        rot, trans = [], []
        for i in range(1, len(frames)):
            gt = np.linalg.inv(loaded[i][1]) @ loaded[0][1]
            est = np.linalg.inv(reg.c2w[i]) @ reg.c2w[0]
            rot.append(rotation_error_deg(est[:3, :3], gt[:3, :3]))
            trans.append(translation_error_deg(est[:3, 3], gt[:3, 3]))
        results.append({"frames": frames, "registered": len(frames), "rot_err": rot, "t_err": trans,
                        "max_rot_err": max(rot), "median_t_err": float(np.median(trans)),
                        "points": reg.report.points, "reproj_px": reg.report.mean_reprojection_error,
                        "seconds": time.perf_counter() - t0})  # fmt: skip
    settings = {
        "data": "hololens-office 540x360",
        "views": args.views,
        "gap": gap,
        "colmap": RegistrationConfig().__dict__,
    }
    print(json.dumps({"machine": machine(), "settings": settings, "multiview": results}))


if __name__ == "__main__":
    main()
