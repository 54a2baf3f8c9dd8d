"""Proto-SaGa baseline (seed 004): association, cosine classifiers, training, prototype inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from gsplat.strategy.ops import duplicate, split

from ffsplat.baselines.protosaga import CosineClassifier, ProtoSaGa, associate_masks, instance_metrics, raw_mask_rows
from ffsplat.baselines.trainer import SceneConfig, SceneTrainer
from ffsplat.core.geometry import project_points
from ffsplat.core.types import Cameras, Views

S = 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_views() -> tuple[Views, torch.Tensor]:
    """3 views (32x32) of a synthetic room and raw masks: GT instances with ids shuffled per view
    (like SAM's automatic masks, unassociated across views)."""
    from tests.synthetic_fixtures import synthetic_views

    views = synthetic_views(3, [0, 3, 6], S)
    img, depth, inst, cams = views.images, views.depths, views.instances, views.cameras
    g = torch.Generator().manual_seed(1)
    raw = torch.stack([(torch.randperm(100, generator=g) + 1)[inst[0, v]] for v in range(3)])[None]
    return Views(img, cams, torch.tensor([0.3]), torch.tensor([8.0]), depths=depth, instances=inst), raw


@pytest.fixture(scope="module")
def fitted(_one_thread):
    torch.manual_seed(0)
    data, raw = tiny_views()
    cfg = SceneConfig(iterations=150, refine_start=50, refine_every=50, reset_every=10_000, init_stride=2, sh_degree=1)
    trainer = SceneTrainer(cfg, data, ProtoSaGa(masks=raw))
    n0 = trainer.num_gaussians
    trainer.fit(progress=False)
    return trainer, n0


def two_view_case():
    """Two fronto-parallel objects A (z = 2) and B (z = 3) in front of a wall (z = 5), seen by two
    cameras 0.3 apart; raw mask ids differ between the views."""
    k = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.3
    cams = Cameras(k.expand(2, 3, 3).clone(), c2w, (S, S))

    g = torch.Generator().manual_seed(0)

    def plane(x0, x1, y0, y1, z, step):  # a slightly rough surface (depth jitter up to 5 cm)
        xs, ys = torch.arange(x0, x1, step), torch.arange(y0, y1, step)
        gx, gy = torch.meshgrid(xs, ys, indexing="ij")
        gz = z + 0.05 * torch.rand(gx.numel(), generator=g)
        return torch.stack([gx.flatten(), gy.flatten(), gz], -1)

    objects = [
        plane(-0.9, -0.1, -0.5, 0.5, 2.0, 0.02),
        plane(0.3, 1.3, -0.6, 0.6, 3.0, 0.03),
        plane(-4, 4, -4, 4, 5.0, 0.06),
    ]
    means = torch.cat(objects)
    owner = torch.cat([torch.full((len(o),), i) for i, o in enumerate(objects)])  # 0: A, 1: B, 2: wall
    ids_per_view = [torch.tensor([5, 2, 9]), torch.tensor([1, 7, 4])]  # raw ids of A, B, wall
    masks = torch.zeros(2, S, S, dtype=torch.long)
    uv, z = project_points(means[None].expand(2, -1, -1), cams.intrinsics, cams.w2c)
    for v in range(2):
        for o in (2, 1, 0):  # paint back to front
            sel = owner == o
            px, py = uv[v, sel, 0].floor().long(), uv[v, sel, 1].floor().long()
            ok = (px >= 0) & (px < S) & (py >= 0) & (py < S)
            masks[v, py[ok], px[ok]] = ids_per_view[v][o]
    return means, owner, cams, masks, ids_per_view


@pytest.mark.parametrize("use_probs", [False, True])
def test_association_merges_views_and_separates_objects(use_probs):
    means, owner, cams, masks, ids_per_view = two_view_case()
    probs = None
    if use_probs:  # uninformative probabilities: the depth criterion must still do it
        probs = [torch.full((len(means), 3), 1 / 3) for _ in range(2)]
    consistent, bank = associate_masks(means, cams, masks, probs, num_patches=8)
    assert len(bank) == 3
    labels = []
    for o in range(3):
        per_view = {int(consistent[v][masks[v] == ids_per_view[v][o]].unique().item()) for v in range(2)}
        assert len(per_view) == 1  # the same object gets one id in both views
        labels.append(per_view.pop())
    assert len(set(labels)) == 3 and 0 not in labels  # and different objects different ids
    # The depth filter keeps each entry on its own object: no wall Gaussian in A's or B's entry.
    for o in range(2):
        assert bool((owner[bank[labels[o] - 1]] == o).all())


def test_association_overlap_threshold_and_probabilities():
    """Two views of one object open two entries when nothing overlaps (delta too high), the depth
    filter is what keeps the wall out, and the probability criterion adds the Gaussians the
    classifier ranks first."""
    means, owner, cams, masks, _ = two_view_case()
    _, bank = associate_masks(means, cams, masks, delta=1.0, num_patches=8)
    assert len(bank) == 6
    # Without the depth filter (delta_d = 1) wall Gaussians behind A and B join their entries.
    _, bank = associate_masks(means, cams, masks, delta_d=1.0, num_patches=8)
    assert all(bool((owner[b] == 2).any()) for b in bank)
    # Probabilities favouring the wall Gaussians for every mask pull wall Gaussians into A's entry.
    probs = [torch.where(owner[:, None] == 2, 0.9, 0.05).expand(-1, 3).contiguous() for _ in range(2)]
    consistent, bank = associate_masks(means, cams, masks, probs, num_patches=8)
    a_id = int(consistent[0][masks[0] == 5].unique().item())
    assert bool((owner[bank[a_id - 1]] == 2).any())


def test_cosine_classifier_logits():
    clf = CosineClassifier(5, 16, tau=10.0)
    x = torch.randn(7, 16) * 3
    expected = 10.0 * torch.stack([F.cosine_similarity(x, w[None].expand_as(x), dim=-1) for w in clf.weight], -1)
    assert torch.allclose(clf(x), expected, atol=1e-5)
    assert clf(x).abs().max() <= 10.0 + 1e-5


def test_raw_mask_rows():
    masks = torch.tensor([[[0, 7], [3, 7]], [[2, 2], [0, 0]]])
    ids, rows = raw_mask_rows(masks)
    assert ids[0].tolist() == [3, 7] and ids[1].tolist() == [2]
    assert rows.tolist() == [[[-1, 1], [0, 1]], [[0, 0], [-1, -1]]]


@pytest.mark.slow
def test_per_view_classifiers_and_short_fit_lowers_ce(fitted):
    trainer, _ = fitted
    method = trainer.method
    assert [c.weight.shape[0] for c in method.classifiers] == [len(torch.unique(m[m > 0])) for m in method.raw_masks]
    assert trainer.params["embed"].shape[1] == 16
    hist = trainer.history
    first = sum(h["ce"] for h in hist[:10]) / 10
    last = sum(h["ce"] for h in hist[-10:]) / 10
    assert last < 0.5 * first


@pytest.mark.slow
def test_predicted_ids_match_instances(fitted):
    trainer, _ = fitted
    method = trainer.method
    consistent = method.associate(trainer)
    gt = trainer.data.instances
    assoc = instance_metrics(consistent[None], gt)
    assert assoc["miou"] > 0.8
    pred = method.predict_ids(trainer, trainer.data.cameras)
    assert pred.shape == gt.shape
    metrics = instance_metrics(pred, gt)
    assert metrics["miou"] > 0.5 and metrics["recall"] > 0, metrics
    assert set(pred.unique().tolist()) <= set(method.prototype_ids.tolist())


@pytest.mark.slow
def test_densification_keeps_embeddings_aligned(fitted):
    trainer, n0 = fitted
    assert trainer.num_gaussians != n0
    assert all(len(v) == trainer.num_gaussians for v in trainer.params.values())
    # Clones and splits copy the embedding of their parent (on a fresh trainer).
    data, raw = tiny_views()
    trainer = SceneTrainer(SceneConfig(init_stride=4), data, ProtoSaGa(masks=raw))
    params, opts = trainer.params, trainer.optimizers
    n = trainer.num_gaussians
    sel = torch.zeros(n, dtype=torch.bool)
    sel[[1, n // 2]] = True
    parents = params["embed"].detach()[sel].clone()
    state = {"grad2d": torch.zeros(n)}
    duplicate(params, opts, state, sel)
    assert torch.equal(params["embed"][n:], parents)
    sel = torch.zeros(n + 2, dtype=torch.bool)
    sel[[0, n + 1]] = True
    parents = params["embed"].detach()[sel].clone()
    split(params, opts, state, sel)
    assert all(len(v) == n + 4 for v in params.values())
    assert torch.equal(params["embed"][-4:], parents.repeat(2, 1))
