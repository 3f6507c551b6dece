"""The evaluator interface: the registry behind test.evaluator (auto by the test set's format), a protocol of
one's own run through the protocol run (engine/evaluate.py) and training's periodic evaluation, and the one
metrics.json writer every protocol and the classifier use."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from restransfer.config import load_config
from restransfer.engine import evaluate as protocol_run
from restransfer.errors import ConfigError
from restransfer.evaluation import DatasetEvaluator, register_evaluator
from restransfer.evaluation.evaluator import build_evaluator, evaluator_for_format, evaluator_names
from restransfer.evaluation.imagenet_loc_evaluator import ImageNetLocEvaluator
from restransfer.evaluation.metrics_file import write_metrics


class DetectionCounter(DatasetEvaluator):
    """A protocol of one's own: how many images were seen, and the mean number of detections per image."""

    name = "counting"
    main_metric = "counting/detections_per_image"

    def __init__(self, dataset, output_dir=None, *, metrics_path=None, **options):
        super().__init__(dataset.image_ids)
        self.expected = len(dataset.image_ids)

    def compute(self, predictions):
        return {
            "images": len(predictions),
            "expected": self.expected,
            "detections_per_image": float(np.mean([len(p["scores"]) for p in predictions])),
        }


register_evaluator("counting", DetectionCounter)


def test_auto_picks_the_evaluator_registered_for_the_test_set_format():
    assert {"coco", "imagenet_det", "imagenet_loc", "counting"} <= set(evaluator_names())
    for fmt in ("coco", "imagenet_det", "imagenet_loc"):
        assert evaluator_for_format(fmt) == fmt
    with pytest.raises(ConfigError, match="no evaluator is registered for test sets of format 'tiff'"):
        evaluator_for_format("tiff")
    with pytest.raises(ConfigError, match="test.evaluator: unknown evaluator 'cocoa'.*coco"):
        build_evaluator("cocoa", "coco", dataset=None)


def test_localization_evaluator_checks_its_mode_before_any_inference():
    class Dataset:
        image_ids = [1, 2]

    assert ImageNetLocEvaluator(Dataset()).mode == "detector"  # no classifier scores given
    assert ImageNetLocEvaluator(Dataset(), classifier_scores=np.zeros((2, 3))).mode == "classifier"
    with pytest.raises(ValueError, match="mode 'classifier' needs classifier scores"):
        ImageNetLocEvaluator(Dataset(), mode="classifier")
    with pytest.raises(ValueError, match="mode 'box' is not one of detector, classifier, gt_class"):
        ImageNetLocEvaluator(Dataset(), mode="box")


class MinScoreRecall(DatasetEvaluator):
    """The documented form of a protocol of one's own: options in configure(), the rest set by the base."""

    name = "min_score"
    main_metric = "min_score/kept"

    def configure(self, *, min_score=0.05, **options):
        self.min_score = min_score

    def compute(self, predictions):
        return {"kept": sum(int((np.asarray(p["scores"]) >= self.min_score).sum()) for p in predictions)}


def test_an_evaluator_of_ones_own_takes_its_options_in_configure(tmp_path):
    class Dataset:
        image_ids = [7, 3]

    register_evaluator("min_score", MinScoreRecall)
    # the options of every protocol are handed over; each evaluator takes its own
    ev = build_evaluator("min_score", "coco", dataset=Dataset(), output_dir=tmp_path, min_score=0.5, voc_metric="area")
    assert isinstance(ev, MinScoreRecall) and ev.min_score == 0.5
    assert ev.dataset is not None and ev.image_ids == [7, 3] and ev.metrics_path == tmp_path / "metrics.json"
    ev.reset()
    ev.process([{"image_id": 3}, {"image_id": 7}], [{"scores": [0.9, 0.2]}, {"scores": [0.6]}])
    assert ev.evaluate() == {"kept": 2}


@pytest.mark.slow
def test_an_evaluator_of_ones_own_runs_through_the_protocol_run(shapes, tmp_path, tiny_overrides):
    """test.evaluator=counting: the inference loop hands every image's prediction to the registered evaluator,
    training's periodic evaluation logs its scalars and ranks checkpoints by its main metric; it has no report."""
    cfg = load_config(
        None,
        tiny_overrides(
            "inference",
            f"data.test={{json: {shapes / 'annotations' / 'val.json'}, image_root: {shapes / 'val'}}}",
            f"output_dir={tmp_path}",
            "model.arch=faster_rcnn",
            "model.roi_heads.score_thresh=0.0",
            "data.num_workers=0",
            "test.evaluator=counting",
        ),
    )
    run = protocol_run.evaluate(cfg, progress=False)
    assert isinstance(run.evaluator, DetectionCounter)
    assert run.metrics["images"] == run.metrics["expected"] == 4
    assert set(run.scalars) == {"counting/images", "counting/expected", "counting/detections_per_image"}
    assert run.main_value == run.metrics["detections_per_image"] > 0
    assert run.report is None and not (tmp_path / "report.html").exists()

    periodic = protocol_run.build_periodic_evaluation(cfg)
    assert (periodic.metric, periodic.higher_is_better) == ("counting/detections_per_image", True)


def test_metrics_file_is_strict_json_with_undefined_values_as_null_at_full_precision(tmp_path):
    from restransfer.classification import evaluate as classification_evaluate
    from restransfer.evaluation import coco

    metrics = {
        "AP": 100.0 / 3.0,
        "APs": math.nan,
        "curve": [1.0, math.inf, -math.inf],
        "top1": np.float32(12.5),
        "per_class": {"circle": np.float64(2.0 / 3.0), "star": float("nan")},
        "counts": np.arange(3),
    }
    path = write_metrics(metrics, tmp_path / "a" / "metrics.json")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    loaded = json.loads(path.read_text(), parse_constant=refuse)
    assert loaded == {
        "AP": 100.0 / 3.0,
        "APs": None,
        "curve": [1.0, None, None],
        "top1": 12.5,
        "per_class": {"circle": 2.0 / 3.0, "star": None},
        "counts": [0, 1, 2],
    }
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temporary left behind
    # one writer: the COCO protocol's and the classifier's metrics.json are written by this same function
    assert coco.write_metrics is write_metrics and classification_evaluate.write_metrics is write_metrics
