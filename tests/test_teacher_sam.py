"""SAM teacher against segment_anything's own predictor, on a tiny randomly initialised SAM."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

import ffsplat  # noqa: F401  (torchvision CPU shim before segment_anything)
from ffsplat.teachers.base import TEACHERS, build_teacher
from ffsplat.teachers.sam import SAMTeacher
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

S, PATCH = 256, 16  # tiny SAM: 256 input, 16 x 16 embedding grid, 64 x 64 low-res masks
G = S // PATCH


def tiny_sam(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=S,
            patch_size=PATCH,
            embed_dim=32,
            depth=2,
            num_heads=2,
            out_chans=256,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=8,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(G, G), input_image_size=(S, S), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=256, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
    )
    with torch.no_grad():  # non-trivial positional/rel-pos weights (zeros at init)
        sam.image_encoder.pos_embed.normal_(0, 0.5)
    return sam.eval()


@pytest.fixture(scope="module")
def teacher() -> SAMTeacher:
    torch.set_num_threads(1)
    return SAMTeacher(tiny_sam())


def uint8_image(h: int, w: int, seed: int = 0, cells: int = 4) -> np.ndarray:
    """Smooth random RGB image (uint8 HWC): ``cells x cells`` random colours, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, cells, cells, generator=g)
    img = torch.nn.functional.interpolate(low, (h, w), mode="bilinear", align_corners=False)[0]
    return (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


def test_registered_and_frozen(teacher: SAMTeacher) -> None:
    assert "sam" in TEACHERS
    assert teacher.dim == 256 and not teacher.needs_labels and teacher.name == "sam"
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.sam.training


@pytest.mark.parametrize(
    ("hw", "expected"), [((64, 64), (16, 16)), ((48, 64), (12, 16)), ((50, 33), (16, 11)), ((256, 256), (16, 16))]
)
def test_encode_shapes(teacher: SAMTeacher, hw: tuple[int, int], expected: tuple[int, int]) -> None:
    # 48x64 -> resized 192x256 -> 12x16 cells; 50x33 -> 256x169 (int(168.96+0.5)) -> ceil(169/16) = 11.
    assert teacher.output_size(*hw) == expected
    feats = teacher.encode(torch.rand(2, 3, *hw))
    assert feats.shape == (2, 256, *expected) and feats.dtype == torch.float32


@pytest.mark.parametrize("hw", [(256, 256), (192, 256), (256, 160)])
def test_encode_matches_predictor(teacher: SAMTeacher, hw: tuple[int, int]) -> None:
    """At the encoder's resolution (no resize) encode == SamPredictor's embedding, cropped."""
    img = uint8_image(*hw)
    predictor = SamPredictor(teacher.sam)
    predictor.set_image(img)
    h, w = teacher.output_size(*hw)
    ref = predictor.get_image_embedding()[..., :h, :w]
    ours = teacher.encode(to_tensor(img))
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # the padded cells are not part of the output, and differ from the valid ones
    assert predictor.get_image_embedding().shape[-2:] == (G, G)


def test_encode_resized_close_to_predictor(teacher: SAMTeacher) -> None:
    """With a resize (float antialiased bilinear vs PIL on uint8) the embeddings agree closely."""
    img = uint8_image(48, 64, seed=3, cells=16)
    predictor = SamPredictor(teacher.sam)
    predictor.set_image(img)
    ref = predictor.get_image_embedding()[..., :12, :16]
    ours = teacher.encode(to_tensor(img))
    other = teacher.encode(to_tensor(uint8_image(48, 64, seed=4, cells=16)))
    err, gap = (ours - ref).abs().mean(), (other - ref).abs().mean()
    assert err < 0.02 * gap, (err, gap)  # measured ~0.006; nearest-neighbour resize gives ~0.15


def test_rgb_order_matters(teacher: SAMTeacher) -> None:
    img = to_tensor(uint8_image(64, 64, seed=1))
    rgb, bgr = teacher.encode(img), teacher.encode(img.flip(1))
    assert (rgb - bgr).abs().mean() > 1e-3
    # and ours is the RGB one: SamPredictor given the same image declared as BGR matches the flipped input
    predictor = SamPredictor(teacher.sam)
    predictor.set_image(uint8_image(256, 256, seed=1), image_format="BGR")
    flipped = to_tensor(uint8_image(256, 256, seed=1)).flip(1)
    torch.testing.assert_close(teacher.encode(flipped), predictor.get_image_embedding(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hw", [(256, 256), (192, 256), (48, 64)])
def test_decode_matches_predictor(teacher: SAMTeacher, hw: tuple[int, int]) -> None:
    height, width = hw
    img = uint8_image(*hw, seed=2)
    emb = teacher.encode(to_tensor(img))
    predictor = SamPredictor(teacher.sam)
    predictor.set_image(img)  # original/input sizes as SAM computes them
    if height != width:
        # SAM's own padded cells hold encoder outputs of padding; decode zero-fills them, so give the
        # predictor the same zero-padded embedding for an exact comparison (square: untouched).
        padded = torch.zeros(1, 256, G, G)
        padded[..., : emb.shape[-2], : emb.shape[-1]] = emb
        predictor.features = padded
    pts = torch.tensor([[[0.5 * width, 0.5 * height], [0.2 * width + 0.5, 0.7 * height], [width - 1.0, 1.0]]])
    labels = torch.tensor([[1, 0, 1]])
    masks, iou, low = teacher.decode(emb, pts, labels, image_size=hw)
    assert masks.shape == (1, 3, 3, height, width) and iou.shape == (1, 3, 3) and low.shape == (1, 3, 3, 4 * G, 4 * G)
    rh, rw = teacher.resized_size(height, width)
    q = (pts[0] - 0.5 * torch.tensor([width / rw, height / rh])).double().numpy()  # predictor's pixel coords
    for j in range(3):
        m, i, lo = predictor.predict(q[j : j + 1], labels[0, j : j + 1].numpy(), return_logits=True)
        torch.testing.assert_close(masks[0, j], torch.as_tensor(m), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(iou[0, j], torch.as_tensor(i), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(low[0, j], torch.as_tensor(lo), atol=1e-4, rtol=1e-4)
    # a multi-point prompt ([N, P, K, 2]) and single-mask output, also against the predictor
    masks1, iou1, _ = teacher.decode(emb, pts[:, None], labels[:, None], multimask=False, image_size=hw)
    m, i, _ = predictor.predict(q, labels[0].numpy(), multimask_output=False, return_logits=True)
    assert masks1.shape == (1, 1, 1, height, width)
    torch.testing.assert_close(masks1[0, 0], torch.as_tensor(m), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou1[0, 0], torch.as_tensor(i), atol=1e-5, rtol=1e-5)


def test_decode_batched_and_differentiable(teacher: SAMTeacher) -> None:
    hw = (48, 64)
    torch.manual_seed(0)
    emb = torch.randn(2, 256, *teacher.output_size(*hw), requires_grad=True)
    pts = torch.tensor([[[10.0, 20.0], [40.0, 5.0]], [[32.0, 24.0], [63.5, 47.5]]])
    masks, iou, low = teacher.decode(emb, pts, image_size=hw)
    assert masks.shape == (2, 2, 3, 48, 64) and iou.shape == (2, 2, 3) and low.shape == (2, 2, 3, 4 * G, 4 * G)
    (masks.sigmoid().mean() + iou.sum()).backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert emb.grad[1].abs().sum() > 0 and torch.isfinite(emb.grad).all()
    assert all(p.grad is None for p in teacher.parameters())
    # the batch is per image: image 1's result does not depend on image 0's embedding
    single, _, _ = teacher.decode(emb[1:].detach(), pts[1:], image_size=hw)
    torch.testing.assert_close(single[0], masks[1].detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        teacher.decode(emb, pts, image_size=(64, 64))  # 16x16 expected, 12x16 given


@pytest.mark.parametrize("scale_by", ["output", "area"])
def test_automatic_masks(teacher: SAMTeacher, scale_by: str) -> None:
    images = torch.cat([to_tensor(uint8_image(48, 64, seed=s)) for s in (5, 6)])
    out = teacher.automatic_masks(
        images, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, scale_by=scale_by
    )
    assert len(out) == 2
    for res in out:
        assert set(res) == {"small", "medium", "large"}
        total = 0
        for m in res.values():
            assert m.dtype == torch.bool and m.dim() == 3 and m.shape[1:] == (48, 64)
            assert (m.flatten(1).sum(1) > 0).all()  # empty masks are dropped
            total += len(m)
        assert 0 < total <= 3 * 16
        if scale_by == "area":
            areas = [res[k].flatten(1).sum(1) for k in ("small", "medium", "large")]
            assert max(len(a) for a in areas) - min(len(a) for a in areas) <= 1
            for lo, hi in zip(areas[:-1], areas[1:]):
                if len(lo) and len(hi):
                    assert lo.max() <= hi.min()
    # strict thresholds filter everything out (random weights) without crashing
    strict = teacher.automatic_masks(images[:1], points_per_side=2, pred_iou_thresh=1e9)
    assert all(len(m) == 0 and m.shape[1:] == (48, 64) for m in strict[0].values())


def test_checkpoint_errors_and_round_trip(tmp_path, teacher: SAMTeacher) -> None:
    with pytest.raises(FileNotFoundError, match="teachers.segmentation.kwargs.checkpoint"):
        build_teacher("sam", checkpoint=None)
    with pytest.raises(FileNotFoundError, match="teachers.segmentation.kwargs.checkpoint"):
        build_teacher("sam", checkpoint=str(tmp_path / "missing.pth"))
    ckpt = tmp_path / "tiny_sam.pth"
    torch.save(teacher.sam.state_dict(), ckpt)
    loaded = build_teacher("sam", checkpoint=str(ckpt), builder=lambda: tiny_sam(seed=123))
    assert isinstance(loaded, SAMTeacher) and not any(p.requires_grad for p in loaded.parameters())
    img = torch.rand(1, 3, 48, 64)
    torch.testing.assert_close(loaded.encode(img), teacher.encode(img))
    assert not torch.allclose(SAMTeacher(tiny_sam(seed=123)).encode(img), teacher.encode(img))
    with pytest.raises(KeyError, match="vit_x"):
        build_teacher("sam", checkpoint=str(ckpt), model_type="vit_x")
