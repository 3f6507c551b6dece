"""The ResNet paper's full detection system (appendix B): global context, box refinement and voting,
multi-scale / flipped testing (union and maxout), ensembles."""

import pytest
import torch
from helpers import tiny_overrides
from helpers.tiny_detectors import tiny_model

from restransfer.backbone import WeightsError
from restransfer.config import ConfigError, load_config
from restransfer.models import build_model
from restransfer.models.checkpoint import apply_detector_state
from restransfer.models.context import RegionsWithContext
from restransfer.models.postprocess import deferred_mask_paste

pytestmark = pytest.mark.usefixtures("single_thread")


def _train_cfg(head, *extra):
    return load_config(
        None,
        tiny_overrides(
            "training",
            "model.arch=mask_rcnn",
            f"model.head={head}",
            "model.rpn.post_nms_top_n_train=16",
            "model.rpn.post_nms_top_n_test=8",
            "model.roi_heads.batch_size_per_image=8",
            "model.roi_heads.detections_per_img=5",
            *extra,
        ),
    )


def _targets():
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 44.0]])
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    for j, b in enumerate(boxes.int().tolist()):
        masks[j, b[1] : b[3], b[0] : b[2]] = 1
    return [{"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks}] * 2


# ------------------------------------------------------------------------------------------ global context


@pytest.mark.parametrize("head", ["c4", "fpn"])
def test_global_context_trains_saves_loads(head):
    cfg = _train_cfg(head, "model.roi_heads.global_context=true")
    model = build_model(cfg)
    plain_width = build_model(_train_cfg(head)).roi_heads.box_predictor.cls_score.in_features
    assert model.roi_heads.box_predictor.cls_score.in_features == 2 * plain_width
    model.train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    losses = model(images, _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # the context half of the classifier's input gets a gradient: the global feature is trained end to end
    grad = model.roi_heads.box_predictor.cls_score.weight.grad
    assert grad[:, plain_width:].abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.roi_heads.box_predictor.cls_score.weight)

    model.eval()
    with torch.no_grad():
        out = model(images)
    restored = build_model(cfg).eval()
    apply_detector_state(restored, model.state_dict(), "ckpt.pth")
    with torch.no_grad():
        again = restored(images)
    assert torch.equal(out[0]["boxes"], again[0]["boxes"]) and torch.equal(out[0]["scores"], again[0]["scores"])


def test_global_context_feature_is_the_whole_image_through_the_same_layers():
    model = build_model(_train_cfg("fpn", "model.roi_heads.global_context=true")).eval()
    head = model.roi_heads.box_head
    regions, context = torch.randn(5, 32, 7, 7), torch.randn(2, 32, 7, 7)
    with torch.no_grad():
        out = head(RegionsWithContext(regions, context, [3, 2]))
        own, glob = head.regions(regions), head.regions(context)
        other = head(RegionsWithContext(regions, torch.randn(2, 32, 7, 7), [3, 2]))
    assert out.shape == (5, 2 * own.shape[1])
    torch.testing.assert_close(out[:, : own.shape[1]], own)
    torch.testing.assert_close(out[:3, own.shape[1] :], glob[0].expand(3, -1))
    torch.testing.assert_close(out[3:, own.shape[1] :], glob[1].expand(2, -1))
    # another image around the same regions gives other logits
    logits, _ = model.roi_heads.box_predictor(out)
    other_logits, _ = model.roi_heads.box_predictor(other)
    assert (logits - other_logits).abs().max() > 1e-4


def test_global_context_checkpoint_mismatch_names_the_key():
    plain = build_model(_train_cfg("fpn"))
    ctx = build_model(_train_cfg("fpn", "model.roi_heads.global_context=true"))
    with pytest.raises(WeightsError, match="model.roi_heads.global_context=false"):
        apply_detector_state(ctx, plain.state_dict(), "plain.pth")
    with pytest.raises(WeightsError, match="model.roi_heads.global_context=true"):
        apply_detector_state(plain, ctx.state_dict(), "context.pth")


# ------------------------------------------------------------------------------------------ test-time system

C4 = ["model.head=c4", "model.rpn.post_nms_top_n_test=20"]


def _optimized(*extra, seed=0):
    cfg, model, images = tiny_model(*extra, seed=seed)
    return cfg, model.optimize_for_inference(), images


def _same(a, b, exact=True):
    assert len(a["boxes"]) > 0
    if exact:
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
        assert torch.equal(a["scores"], b["scores"])
    else:  # a weighted mean of identical boxes rounds, and the box head scores the boxes again in a batch of
        # another size, whose matrix product may round differently in the last bits (AVX-512 kernels do)
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["masks"], b["masks"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
    assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("extra", [[], C4], ids=["fpn", "c4"])
def test_one_scale_without_flip_is_the_plain_model(extra):
    from restransfer.models.system import DetectionSystem

    cfg, model, images = _optimized(*extra)
    with torch.no_grad():
        plain = model(images)[0]
        system = DetectionSystem([model], min_sizes=[cfg.input.min_size_test], max_size=cfg.input.max_size_test)
        _same(plain, system(images)[0])


@pytest.mark.parametrize("extra", [[], C4], ids=["fpn", "c4"])
def test_ensemble_of_a_model_with_itself_is_the_model(extra):
    from restransfer.models.system import DetectionSystem

    _, model, images = _optimized(*extra)
    with torch.no_grad():
        _same(model(images)[0], DetectionSystem([model, model])(images)[0])


def test_refinement_with_zero_regressor_keeps_the_boxes():
    from restransfer.models.system import DetectionSystem

    _, model, images = _optimized()
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
        # the regressed boxes are the proposals: scoring them again repeats the first predictions, so the
        # union after NMS at the refinement threshold is the plain result at that threshold; voting among
        # identical boxes (IoU 1) leaves them as they are
        refined = DetectionSystem([model], box_refinement=True, refinement_nms=0.3, box_voting_iou=1.0)(images)[0]
        model.roi_heads.nms_thresh = 0.3
        plain = model(images)[0]
    _same(plain, refined, exact=False)


def test_box_voting_is_the_score_weighted_mean_of_overlapping_boxes_of_the_class():
    from restransfer.models.refinement import box_voting, select_detections

    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]]
    )
    scores = torch.tensor([0.9, 0.3, 0.5, 0.8])
    labels = torch.tensor([1, 1, 2, 1])  # box 2 has another class; box 3 does not overlap
    kept, kept_scores, kept_labels = select_detections(boxes, scores, labels, 0.3, 10, voting_iou=0.5)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.8, 0.5])
    torch.testing.assert_close(kept[0], torch.tensor([0.3 / 1.2, 0.0, 10.0 + 0.3 / 1.2, 10.0]))
    torch.testing.assert_close(kept[1:], boxes[[3, 2]])
    # below the voting IoU the neighbour does not count
    alone = box_voting(boxes[:1], labels[:1], boxes, scores, labels, iou_thresh=0.9)
    torch.testing.assert_close(alone, boxes[:1])


def _mirror(boxes, width):
    from restransfer.models.tta import flip_boxes

    return flip_boxes(boxes, width)


@pytest.mark.parametrize("extra", [[], C4], ids=["fpn", "c4"])
def test_flipped_testing_is_mirror_equivariant(extra):
    from restransfer.models.system import DetectionSystem

    cfg, model, images = _optimized(*extra)
    system = DetectionSystem([model], min_sizes=[cfg.input.min_size_test], flip=True)
    assert system.views() == [(96, False), (96, True)]
    with torch.no_grad(), deferred_mask_paste(system):
        a = system(images)[0]
        b = system([images[0].flip(-1)])[0]
    width = images[0].shape[-1]
    assert len(a["boxes"]) > 0 and len(a["boxes"]) == len(b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    assert torch.equal(a["labels"], b["labels"])
    torch.testing.assert_close(_mirror(b["boxes"], width), a["boxes"], atol=1e-3, rtol=0)
    # each box's mask probabilities, predicted in the mirrored view and mirrored back
    assert a["mask_probs"].std() > 0.05
    torch.testing.assert_close(b["mask_probs"].flip(-1), a["mask_probs"], atol=1e-4, rtol=0)


def test_flipped_testing_of_a_mirror_symmetric_image_gives_mirror_symmetric_detections():
    from restransfer.models.system import DetectionSystem

    cfg, model, images = _optimized()
    half = images[0][..., :64]
    image = torch.cat([half, half.flip(-1)], dim=-1)  # (3, 96, 128), its own mirror image
    system = DetectionSystem([model], min_sizes=[cfg.input.min_size_test], flip=True)
    with torch.no_grad():
        out = system([image])[0]
    from torchvision.ops import box_iou

    mirrored = _mirror(out["boxes"], image.shape[-1])
    iou = box_iou(mirrored, out["boxes"]) * (out["labels"][:, None] == out["labels"][None, :])
    assert len(out["boxes"]) > 0
    # every detection's mirror image is a detection of the same class (the merged pairs are symmetric)
    assert (iou.max(dim=1).values > 0.9).all(), iou.max(dim=1).values


def test_maxout_scale_rule():
    from restransfer.models.tta import maxout_scale_pair

    factors = [0.5, 1.0, 1.5, 2.0, 2.5]
    w = torch.tensor([112.0, 448.0, 10.0, 224.0, 100.0])
    h = torch.tensor([112.0, 448.0, 10.0, 224.0, 400.0])
    best, other = maxout_scale_pair(w, h, factors)
    # 112 px at 2.0 is 224 px; its neighbours give 168 px (|168^2 - 224^2| = 21952) and 280 px (28224)
    assert best.tolist() == [3, 0, 4, 1, 1]
    assert other.tolist() == [2, 1, 3, 0, 2]
    one_best, one_other = maxout_scale_pair(w, h, [1.0])
    assert one_best.tolist() == one_other.tolist() == [0] * 5
    with pytest.raises(ValueError, match="increasing"):
        maxout_scale_pair(w, h, [1.0, 1.0])


def test_maxout_with_one_pyramid_level_is_the_plain_c4_model():
    from restransfer.models.system import DetectionSystem

    cfg, model, images = _optimized(*C4)
    size = cfg.input.min_size_test
    with torch.no_grad():
        plain = model(images)[0]
        # both sizes resize to the test size: one level, each region pooled there twice, max = itself
        maxout = DetectionSystem([model], merge="maxout", min_sizes=[size, size])(images)[0]
        pyramid = DetectionSystem([model], merge="maxout", min_sizes=[64, size, 144], max_size=400)(images)[0]
    _same(plain, maxout)
    assert len(pyramid["boxes"]) > 0 and not torch.equal(pyramid["scores"], plain["scores"])


def test_maxout_with_global_context_runs_on_c4():
    from restransfer.models.system import DetectionSystem

    cfg, model, images = _optimized(*C4, "model.roi_heads.global_context=true")
    with torch.no_grad():
        plain = model(images)[0]
        maxout = DetectionSystem([model], merge="maxout", min_sizes=[96, 96])(images)[0]
        pyramid = DetectionSystem([model], merge="maxout", min_sizes=[64, 96, 144], max_size=400)(images)[0]
    _same(plain, maxout)
    assert len(pyramid["boxes"]) > 0


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["model.head=fpn", "test.aug.merge=maxout", "test.aug.min_sizes=[64,96]"],
            "test.aug.merge: maxout .*head is fpn",
        ),
        (["model.head=c4", "test.aug.merge=maxout"], "test.aug.merge: maxout needs a pyramid"),
        (
            ["model.head=c4", "test.aug.merge=maxout", "test.aug.min_sizes=[64,96]", "test.aug.flip=true"],
            "test.aug.flip=false",
        ),
        (["test.aug.merge=mean"], "test.aug.merge: 'mean' is not one of union, maxout"),
        (["test.refinement_nms=0"], "test.refinement_nms"),
        (["test.box_voting_iou=1.5"], "test.box_voting_iou"),
        (["test.aug.min_sizes=[0]"], "test.aug"),
    ],
)
def test_bad_combinations_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_system_switches_come_from_the_config():
    from restransfer.models.build import system_kwargs

    cfg = load_config(None, tiny_overrides("inference"))
    assert system_kwargs(cfg) is None
    same = load_config(None, tiny_overrides("inference", "test.aug.min_sizes=[96]"))
    assert system_kwargs(same) is None  # the model's own test size: the plain path
    capped = load_config(None, tiny_overrides("inference", "test.aug.max_size=128"))
    assert system_kwargs(capped)["min_sizes"] == [] and system_kwargs(capped)["max_size"] == 128
    on = load_config(
        None,
        tiny_overrides("inference", "test.box_refinement=true", "test.aug.min_sizes=[64,96]", "test.aug.flip=true"),
    )
    assert system_kwargs(on) == dict(
        box_refinement=True,
        refinement_nms=0.3,
        box_voting_iou=0.5,
        min_sizes=[64, 96],
        max_size=160,
        flip=True,
        merge="union",
    )


def test_predictor_ensemble_of_one_checkpoint_twice_equals_it(tmp_path):
    from helpers.tiny_detectors import write_checkpoint, write_config

    from restransfer import Predictor

    _, model, images = tiny_model()
    path = write_checkpoint(tmp_path, model, ["a", "b", "c"])
    config = write_config(tmp_path)
    image = (images[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    one = Predictor(config, weights=path, threshold=0.0)(image)
    two = Predictor(config, weights=[path, path], threshold=0.0)(image)
    assert len(one["boxes"]) > 0
    assert (one["boxes"] == two["boxes"]).all() and (one["scores"] == two["scores"]).all()
    assert (one["masks"] == two["masks"]).all() and one["class_names"] == two["class_names"]
    other = tmp_path / "other"
    other.mkdir()
    different = write_checkpoint(other, model, ["a", "b", "x"])
    with pytest.raises(ValueError, match="ensemble.*share their classes"):
        Predictor(config, weights=[path, different])


def test_weights_option_takes_several_checkpoints_and_leaves_overrides():
    from restransfer.cli import split_weights

    assert split_weights(["a.pth", "b.pth", "test.box_refinement=true"], ["x=1"]) == (
        ["a.pth", "b.pth"],
        ["test.box_refinement=true", "x=1"],
    )
    assert split_weights(None, ["x=1"]) == (None, ["x=1"])


@pytest.mark.slow
def test_ablation_tool_prints_the_table_rows(shapes, tmp_path):
    """tools/ablation.py on a tiny random model: every row runs, the baseline row is eval_coco's result for
    the same weights, and rows added later join the earlier ones."""
    import importlib.util
    import json
    from pathlib import Path

    from helpers.tiny_detectors import tiny_config, write_checkpoint

    from restransfer.config import dump_config
    from restransfer.engine.evaluate import run_coco_evaluation

    _, model, _ = tiny_model()
    weights = write_checkpoint(tmp_path, model, ["circle", "triangle", "square"])
    test = f"{{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}"
    cfg = tiny_config(f"data.test={test}", "data.num_workers=0", f"output_dir={tmp_path / 'out'}")
    config = tmp_path / "tiny.yaml"
    dump_config(cfg, config)
    tool = Path(__file__).resolve().parents[2] / "tools" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation_tool", tool)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    out = tmp_path / "ablation"
    common = [str(config), "--weights", str(weights), "--scales", "64", "96", "--output", str(out)]
    assert ablation.main(common + ["--rows", "baseline", "refinement"]) == 0
    assert ablation.main(common + ["--ensemble-weights", str(weights), "--rows", "multiscale", "ensemble"]) == 0
    rows = json.loads((out / "ablation.json").read_text())
    assert [r["row"] for r in rows] == ["baseline", "refinement", "multiscale", "ensemble"]
    assert rows[3]["weights"] == [str(weights)] * 2 and rows[0]["images"] == 4
    assert all(r["seconds_per_image"] > 0 for r in rows)
    expected = run_coco_evaluation(cfg, str(weights), metrics_path=tmp_path / "m.json", progress=False)
    assert rows[0]["metrics"]["bbox"]["AP"] == pytest.approx(expected["bbox"]["AP"], abs=1e-12)
    assert "test.box_refinement=true" in rows[1]["overrides"]


@pytest.mark.slow
def test_eval_coco_ensemble_of_one_checkpoint_twice_gives_its_metrics(shapes, tmp_path):
    """tools/eval_coco.py CONFIG --weights W W key=value: the overrides after the checkpoints stay
    overrides, and the model ensembled with itself scores what it scores alone."""
    import importlib.util
    import json
    from pathlib import Path

    from helpers.tiny_detectors import tiny_config, write_checkpoint

    from restransfer.config import dump_config

    _, model, _ = tiny_model()
    weights = str(write_checkpoint(tmp_path, model, ["circle", "triangle", "square"]))
    test = f"{{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}"
    config = tmp_path / "tiny.yaml"
    dump_config(tiny_config(f"data.test={test}", "data.num_workers=0", f"output_dir={tmp_path / 'out'}"), config)
    tool = Path(__file__).resolve().parents[2] / "tools" / "eval_coco.py"
    spec = importlib.util.spec_from_file_location("eval_coco_tool", tool)
    eval_coco = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_coco)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    low = "model.roi_heads.score_thresh=0.0"
    assert eval_coco.main([str(config), "--weights", weights, low, "--output", str(one)]) == 0
    assert eval_coco.main([str(config), "--weights", weights, weights, low, "--output", str(two)]) == 0
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["bbox"]["AP50"] > 0 and a["bbox"]["AP"] == pytest.approx(b["bbox"]["AP"], abs=1e-9)
    assert a["segm"]["AP"] == pytest.approx(b["segm"]["AP"], abs=1e-9)


@pytest.mark.slow
def test_analyze_coco_analyses_the_refined_detections(shapes, tmp_path):
    """tools/analyze_coco.py CONFIG --weights W test.box_refinement=true analyses the test-time system's
    detections: they differ from the plain model's, and the analysis is exactly that of the evaluation's
    refined predictions."""
    import importlib.util
    import json
    from pathlib import Path

    from helpers.tiny_detectors import tiny_config, write_checkpoint

    from restransfer.analysis.coco_errors import analyze_coco_errors
    from restransfer.config import dump_config
    from restransfer.engine.evaluate import predict_dataset
    from restransfer.evaluation.coco import predictions_to_coco_results

    _, model, _ = tiny_model()
    weights = str(write_checkpoint(tmp_path, model, ["circle", "triangle", "square"]))
    test = f"{{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}"
    low = "model.roi_heads.score_thresh=0.0"
    config = tmp_path / "tiny.yaml"
    dump_config(tiny_config(f"data.test={test}", "data.num_workers=0", low, f"output_dir={tmp_path / 'out'}"), config)
    tool = Path(__file__).resolve().parents[2] / "tools" / "analyze_coco.py"
    spec = importlib.util.spec_from_file_location("analyze_coco_tool", tool)
    analyze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analyze)
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    assert analyze.main([str(config), "--weights", weights, "--output", str(plain)]) == 0
    assert analyze.main([str(config), "--weights", weights, "test.box_refinement=true", "--output", str(refined)]) == 0
    a = json.loads((plain / "analysis.json").read_text())
    b = json.loads((refined / "analysis.json").read_text())
    assert a["overall"] != b["overall"]

    cfg = load_config(config, ["test.box_refinement=true"])
    dataset, predictions = predict_dataset(cfg, weights, progress=False)
    results = predictions_to_coco_results(predictions, dataset.label_to_cat_id)
    expected = analyze_coco_errors(dataset.coco.dataset, results, "bbox", image_ids=list(dataset.image_ids)).areas()
    assert b["overall"] == pytest.approx(expected, nan_ok=True)
