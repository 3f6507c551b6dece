import logging

import pytest
import torch
from helpers import tiny_overrides
from torchvision.ops import box_iou

from restransfer.config import load_config
from restransfer.models import CLASS_DEPENDENT, build_model


def _cfg(arch, head, depth=18, style="pytorch", extra=()):
    """The suite's tiny training recipe as ``arch``/``head``/``depth``/``style``, with fewer RoIs and detections
    still: every combination stays fast on 2 CPU cores."""
    return load_config(
        None,
        tiny_overrides(
            "training",
            f"model.arch={arch}",
            f"model.head={head}",
            f"model.backbone.depth={depth}",
            f"model.backbone.style={style}",
            "input.max_size_test=96",
            "model.rpn.post_nms_top_n_train=16",
            "model.rpn.post_nms_top_n_test=8",
            "model.roi_heads.batch_size_per_image=8",
            "model.roi_heads.detections_per_img=5",
            *extra,
        ),
    )


def _targets(sizes, with_masks, empty_second=True):
    targets = []
    for i, (h, w) in enumerate(sizes):
        n = 0 if (empty_second and i == 1) else 2
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 44.0]])[:n]
        t = {"boxes": boxes, "labels": torch.tensor([1, 3])[:n]}
        if with_masks:
            masks = torch.zeros(n, h, w, dtype=torch.uint8)
            for j, b in enumerate(boxes.int().tolist()):
                masks[j, b[1] : b[3], b[0] : b[2]] = 1
            t["masks"] = masks
        targets.append(t)
    return targets


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
@pytest.mark.parametrize("depth", [18, 101])
@pytest.mark.parametrize("head", ["c4", "fpn"])
@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_every_combination_trains_and_infers(arch, head, depth, style):
    model = build_model(_cfg(arch, head, depth, style))
    sizes = [(64, 80), (72, 64)]
    images = [torch.rand(3, h, w) for h, w in sizes]
    model.train()
    losses = model(images, _targets(sizes, arch == "mask_rcnn"))
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if arch == "mask_rcnn" else set())
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen: stem and res2 with the default freeze_at=2
            assert p.grad is None, name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1")) for n in frozen)
    assert model.backbone.body.layer2[0].conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(images)
    for o, (h, w) in zip(out, sizes):
        n = len(o["boxes"])
        assert o["boxes"].shape == (n, 4) and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        if n:
            assert o["labels"].min() >= 1 and o["labels"].max() <= 3
            assert (o["boxes"][:, 2] <= w).all() and (o["boxes"][:, 3] <= h).all()
        if arch == "mask_rcnn":
            assert o["masks"].shape == (n, 1, h, w)


def test_image_without_detections():
    model = build_model(_cfg("mask_rcnn", "fpn", extra=["model.roi_heads.score_thresh=1.0"])).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 64)])
    assert out[0]["boxes"].shape == (0, 4) and out[0]["masks"].shape == (0, 1, 64, 64)


def test_c4_layout():
    model = build_model(_cfg("mask_rcnn", "c4", depth=50, extra=["model.roi_heads.mask_conv_dim=256"]))
    # trunk ends at res4 (stride 16); res5 runs per region and is shared by the box and mask branches
    assert model.backbone.out_channels == 1024 and not hasattr(model.backbone.body, "layer4")
    assert model.roi_heads.box_head.res5 is model.roi_heads.mask_head
    assert model.roi_heads.box_roi_pool.output_size == (6, 6)
    assert model.roi_heads.box_head.res5.layer4[0].conv1.stride == (1, 1)  # pytorch style: stride in the 3x3
    assert model.roi_heads.box_head.res5.layer4[0].conv2.stride == (2, 2)
    assert model.roi_heads.mask_predictor.conv5_mask.out_channels == 256
    n_res5 = sum(p.numel() for p in model.roi_heads.box_head.parameters())
    n_all = sum(p.numel() for p in model.parameters())  # parameters() counts shared ones once
    n_separate = sum(p.numel() for n, p in model.named_parameters(remove_duplicate=False))
    assert n_separate - n_all == n_res5


def _overfit_data():
    g = torch.Generator().manual_seed(1)
    colors = {1: (1.0, 0.2, 0.2), 2: (0.2, 1.0, 0.2), 3: (0.2, 0.2, 1.0)}
    specs = [
        [(10, 12, 50, 60, 1), (70, 20, 120, 70, 2), (30, 80, 90, 120, 3)],
        [(20, 20, 80, 60, 2), (60, 70, 110, 118, 1)],
    ]
    images, targets = [], []
    for spec in specs:
        img = torch.rand(3, 128, 128, generator=g) * 0.3
        for x1, y1, x2, y2, c in spec:
            img[:, y1:y2, x1:x2] = torch.tensor(colors[c])[:, None, None]
        images.append(img)
        targets.append(
            {
                "boxes": torch.tensor([s[:4] for s in spec], dtype=torch.float32),
                "labels": torch.tensor([s[4] for s in spec]),
            }
        )
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("head, iterations, lr", [("c4", 90, 0.02), ("fpn", 100, 0.01)])
def test_overfit_two_images(head, iterations, lr):
    """The whole detector learns: the loss falls below 30% of its start and every box is found with its class
    (score > 0.5, IoU > 0.5: the mAP@.5 criterion). Kept cheap: 16 sampled RoIs per image on 6x6 res4 windows
    for the C4 head's per-region res5, a 64-channel FPN with a 256-wide box head. Checked over seeds 0-3: loss
    ratios 0.12-0.24, the worst box IoU 0.64 (C4) and 0.77 (FPN), with 1 and 2 threads."""
    torch.manual_seed(0)
    head_options = (
        ["model.roi_heads.batch_size_per_image=16", "model.anchor.sizes=[32,64]"]
        if head == "c4"
        else [
            "model.roi_heads.batch_size_per_image=32",
            "model.anchor.sizes=[16,32,64,128,256]",
            "model.fpn_out_channels=64",
            "model.roi_heads.fpn_representation_size=256",
            "model.rpn.pre_nms_top_n_train=300",
        ]
    )
    cfg = load_config(
        None,
        [
            "model.arch=faster_rcnn",
            f"model.head={head}",
            "model.backbone.depth=18",
            "model.backbone.norm=bn",
            "model.backbone.freeze_at=0",
            "model.num_classes=3",
            "input.min_size_test=128",
            "input.max_size_test=128",
            "model.rpn.post_nms_top_n_train=200",
            "model.rpn.pre_nms_top_n_test=200",
            "model.rpn.post_nms_top_n_test=100",
            "model.roi_heads.c4_pooler_resolution=6",
            *head_options,
        ],
    )
    model = build_model(cfg).train()
    images, targets = _overfit_data()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4)
    first = last = None
    for it in range(iterations):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (it + 1) / 20)
        loss = sum(model(images, targets).values())
        first = first if first is not None else loss.item()
        last = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert last < 0.3 * first, (first, last)
    model.eval()
    with torch.no_grad():
        out = model(images)
    for o, t in zip(out, targets):
        keep = o["scores"] > 0.5
        iou = box_iou(t["boxes"], o["boxes"][keep]) * (t["labels"][:, None] == o["labels"][keep][None])
        assert keep.any() and (iou.max(dim=1).values > 0.5).all(), iou


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_checkpoint_with_other_class_count_reinitializes_only_class_layers(tmp_path, caplog, arch):
    src = build_model(
        load_config(None, [f"model.arch={arch}", "model.head=fpn", "model.backbone.depth=18", "model.num_classes=90"])
    )
    path = tmp_path / "coco.pth"
    torch.save({"model": src.state_dict()}, path)
    cfg = load_config(
        None,
        [
            f"model.arch={arch}",
            "model.head=fpn",
            "model.backbone.depth=18",
            "model.num_classes=3",
            f"model.weights={path}",
        ],
    )
    with caplog.at_level(logging.WARNING, logger="restransfer"):
        model = build_model(cfg)
    expected = {"roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"}
    if arch == "mask_rcnn":
        expected.add("roi_heads.mask_predictor.mask_fcn_logits")
    assert all(name in caplog.text for name in expected) and "re-initialized" in caplog.text
    src_sd, sd = src.state_dict(), model.state_dict()
    for k, v in sd.items():
        if k.startswith(CLASS_DEPENDENT):
            assert v.shape != src_sd[k].shape
        else:
            assert torch.equal(v, src_sd[k]), k
    assert model.roi_heads.box_predictor.cls_score.out_features == 4


def test_checkpoint_of_other_architecture_is_an_error(tmp_path):
    from restransfer.backbone import WeightsError

    src = build_model(load_config(None, ["model.head=fpn", "model.backbone.depth=18"]))
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(WeightsError, match="shape mismatch.*backbone.body"):
        build_model(load_config(None, ["model.head=fpn", "model.backbone.depth=50", f"model.weights={path}"]))
    with pytest.raises(WeightsError, match="missing.*roi_heads.mask_head"):
        build_model(
            load_config(
                None, ["model.arch=mask_rcnn", "model.head=fpn", "model.backbone.depth=18", f"model.weights={path}"]
            )
        )


@pytest.mark.parametrize(
    "bad, match",
    [
        (
            {"boxes": torch.tensor([[10.0, 10.0, 10.0, 20.0]]), "labels": torch.tensor([1])},
            r"targets\[1\]: box 0 .*zero or negative",
        ),
        ({"boxes": torch.tensor([[10.0, 10.0, 5.0, 20.0]]), "labels": torch.tensor([1])}, r"targets\[1\]: box 0"),
        (
            {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([4])},
            r"targets\[1\]: label 4 .*outside 1..3",
        ),
        ({"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]), "labels": torch.tensor([0])}, r"targets\[1\]: label 0"),
        (
            {
                "boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]]),
                "labels": torch.tensor([1]),
                "masks": torch.zeros(2, 64, 64, dtype=torch.uint8),
            },
            r"targets\[1\]: 2 masks for 1 boxes",
        ),
    ],
)
def test_bad_targets_name_the_image(bad, match):
    model = build_model(_cfg("mask_rcnn", "fpn")).train()
    good = _targets([(64, 64)], with_masks=True, empty_second=False)[0]
    bad = dict(bad)
    bad.setdefault("masks", torch.zeros(1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match=match):
        model([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [good, bad])


def test_empty_target_trains():
    model = build_model(_cfg("mask_rcnn", "fpn")).train()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 64, dtype=torch.uint8),
    }
    losses = model([torch.rand(3, 64, 64)], [empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_pixel_convention_follows_weights_and_config(tmp_path):
    m = build_model(_cfg("faster_rcnn", "fpn", style="caffe"))
    assert m.transform.channel_order == "BGR" and m.pixel_convention.std == (1.0, 1.0, 1.0)
    m = build_model(_cfg("faster_rcnn", "fpn", extra=["model.pixel_mean=[1.0, 2.0, 3.0]", "model.channel_order=BGR"]))
    assert m.transform.channel_order == "BGR" and m.pixel_convention.mean == (1.0, 2.0, 3.0)
    # BGR models see the channels reversed
    x = torch.rand(3, 8, 8)
    torch.testing.assert_close(m.transform.normalize(x)[0], (x[2] * 255 - 1.0) / m.pixel_convention.std[0] * 1.0)
