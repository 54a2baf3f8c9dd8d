"""FHGS at real resolution: the chunked clustering loss keeps memory bounded, and the CUDA path's
contract with gsplat's ``rasterize_to_indices_in_range`` (checked on CPU with a recording stand-in)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ffsplat  # noqa: F401
from ffsplat.baselines.fhgs import (
    FHGS,
    GsplatIndices,
    internal_clustering,
    internal_clustering_chunked,
    ordered_contributions,
    ordered_contributions_gsplat,
    ordered_from_pairs,
)
from ffsplat.baselines.trainer import SceneConfig, SceneTrainer
from ffsplat.core.types import Views
from ffsplat.render.renderer import RasterSettings
from tests.synthetic_fixtures import synthetic_views

S = 24


def scene():
    views = synthetic_views(3, [0, 3], S)
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(1, 2, 8, 12, 12, generator=g)
    data = Views(views.images, views.cameras, views.near, views.far, depths=views.depths, teacher={"sam": teacher})
    trainer = SceneTrainer(SceneConfig(iterations=1, sh_degree=0, densify=False, init_stride=2), data, FHGS())
    return trainer, data


def test_chunked_clustering_matches_and_bounds_saved_tensors():
    torch.manual_seed(0)
    p, k, c, n = 2048, 12, 64, 300
    weights = (torch.rand(p, k) * 0.1).requires_grad_()
    ids = torch.randint(n, (p, k))
    feats = F.normalize(torch.randn(n, c), dim=-1)
    target = F.normalize(torch.randn(p, c), dim=-1)
    full = internal_clustering(weights, ids, feats, target)
    (g_full,) = torch.autograd.grad(full.sum(), weights)

    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked = internal_clustering_chunked(weights, ids, feats, target, max_elements=1 << 16)
    (g_chunk,) = torch.autograd.grad(chunked.sum(), weights)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunk, g_full)
    assert largest[0] < p * k * c // 8, largest[0]  # no [P, K, C] tensor kept for backward

    largest[0] = 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        internal_clustering(weights, ids, feats, target)
    assert largest[0] >= p * k * c  # what the chunking avoids


def test_pairs_to_ordered_weights_reproduce_the_rasterizer():
    trainer, data = scene()
    settings = RasterSettings(backend="torch")
    w, ids, valid = ordered_contributions(trainer.gaussians(detach_geometry=True), data.cameras, settings)
    pix = torch.arange(len(w))[:, None].expand_as(w)[valid]
    before = torch.cat([torch.zeros(len(w), 1), w.cumsum(-1)[:, :-1]], -1)
    alphas = (w / (1 - before).clamp_min(1e-12))[valid]
    w2, ids2, valid2 = ordered_from_pairs(pix, ids[valid], alphas, len(w))
    torch.testing.assert_close(w2, w[:, : w2.shape[1]], atol=2e-5, rtol=1e-3)  # float32 log-space products
    assert torch.equal(ids2, ids[:, : ids2.shape[1]]) and torch.equal(valid2, valid[:, : valid2.shape[1]])


class RecordingIndices(GsplatIndices):
    """Stand-in for gsplat's CUDA calls: records what is handed over and answers from the torch
    rasterizer's own ordered contributions (``rank`` in ``[start, end)`` blocks of ``tile_size^2``
    per call, as gsplat counts its ranges)."""

    def __init__(self, reference_ids, reference_valid, height, width):
        self.ids, self.valid, self.h, self.w = reference_ids, reference_valid, height, width
        self.block = 1
        self.calls = []

    def isect(self, means2d, radii, depths, tile_size, tiles_x, tiles_y):
        self.calls.append(
            ("isect", means2d.dtype, tuple(means2d.shape), radii.dtype, tuple(radii.shape), depths.dtype, tile_size)
        )
        images = means2d.shape[0]
        offsets = torch.zeros(images, tiles_y, tiles_x, dtype=torch.int32)
        return offsets, torch.arange(self.ids.shape[1], dtype=torch.int32)  # longest list = K

    def indices_in_range(
        self, start, end, transmittances, means2d, conics, opacities, width, height, tile_size, offsets, flatten_ids
    ):
        self.calls.append(("range", start, end, transmittances.dtype, tuple(transmittances.shape), tuple(means2d.shape),
                           tuple(conics.shape), tuple(opacities.shape), conics.dtype, opacities.dtype, width, height,
                           offsets.dtype, flatten_ids.dtype))  # fmt: skip
        rank = torch.arange(self.ids.shape[1])[None].expand_as(self.ids)
        block = tile_size * tile_size
        sel = self.valid & (rank >= start * block) & (rank < end * block)
        flat = torch.arange(len(self.ids))[:, None].expand_as(self.ids)[sel]
        return self.ids[sel].int(), (flat % (height * width)).int(), (flat // (height * width)).int()


def test_gsplat_path_contract_and_values_with_a_recording_stand_in():
    trainer, data = scene()
    settings = RasterSettings(backend="torch", tile_size=2)  # blocks of 4 Gaussians: several calls
    g = trainer.gaussians()
    w_ref, ids_ref, valid_ref = ordered_contributions(g, data.cameras, settings)
    backend = RecordingIndices(ids_ref, valid_ref, S, S)
    w, ids, valid = ordered_contributions_gsplat(g, data.cameras, settings, batch=2, backend=backend)
    n = g.num_gaussians
    assert backend.calls[0] == ("isect", torch.float32, (2, n, 2), torch.int32, (2, n, 2), torch.float32, 2)
    ranges = [c for c in backend.calls if c[0] == "range"]
    blocks = -(-ids_ref.shape[1] // 4)
    assert len(ranges) > 1 and [c[1:3] for c in ranges] == [(s, s + 2) for s in range(0, blocks, 2)]
    assert all(c[3:] == (torch.float32, (2, S, S), (2, n, 2), (2, n, 3), (2, n), torch.float32, torch.float32, S, S,
                         torch.int32, torch.int32) for c in ranges)  # fmt: skip
    torch.testing.assert_close(w, w_ref[:, : w.shape[1]], atol=1e-5, rtol=1e-4)
    assert torch.equal(ids[valid], ids_ref[:, : ids.shape[1]][valid])
    w.sum().backward()  # alphas are recomputed in torch: gradients reach the geometry
    assert trainer.params["means"].grad is not None and trainer.params["means"].grad.abs().sum() > 0


def test_compare_decodes_fhgs_features_at_the_teachers_scale():
    """The glue: ``compare.score`` hands the prompt decoder FHGS's render rescaled to the teacher's norm."""
    from types import SimpleNamespace

    from ffsplat.baselines.compare import score, teacher_scale
    from ffsplat.core.types import Example
    from ffsplat.objectives.metrics import PromptableMeter, SegmentationMeter

    class Recording:
        def __init__(self):
            self.norms = []

        def decode(self, embeddings, points, image_size):
            self.norms.append(float(embeddings.norm(dim=1).median()))
            h, w = image_size
            masks = torch.zeros(1, points.shape[1], 3, h, w)
            return masks, masks[..., 0, 0], masks

    trainer, data = scene()
    trainer.data.teacher["sam"] = trainer.data.teacher["sam"] * 5  # a teacher far from unit norm
    target = Views(data.images, data.cameras, data.near, data.far, instances=torch.ones(1, 2, S, S, dtype=torch.long))
    decoder = Recording()
    predictor = SimpleNamespace(prompt_decoder=decoder, class_embeddings=torch.eye(8))
    meters = {"seg": SegmentationMeter(8), "source_seg": SegmentationMeter(8), "prompt": PromptableMeter()}
    score("fhgs", trainer, trainer.method, Example(data, target, ["s"]), predictor, meters, prompt_grid=2)
    expected = teacher_scale(trainer.data.teacher["sam"])
    assert len(decoder.norms) == 2 and all(abs(n - expected) < 1e-3 * expected for n in decoder.norms), (
        decoder.norms,
        expected,
    )
