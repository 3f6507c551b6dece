"""The command-line tools as a user runs them, on a tiny COCO-layout folder built here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# two iterations leave every class score below the default 0.05 threshold: keep all detections, so the
# evaluation has results to score
KEEP_ALL = ["model.roi_heads.score_thresh=0.0"]


def _run(args, cwd, env_extra=None):
    env = {**os.environ, "RESTRANSFER_NO_PROGRESS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["coco_faster_rcnn_r101.yaml", "coco_mask_rcnn_r101_fpn.yaml"])
def test_coco_configs_train_and_evaluate_on_a_coco_layout(coco_root, tiny_overrides, tmp_path, config):
    out = tmp_path / "out"
    tiny = tiny_overrides("training", *KEEP_ALL)
    proc = _run(
        [REPO / "tools" / "train_det.py", REPO / "configs" / config, *tiny, f"output_dir={out}"],
        tmp_path,
        {"RESTRANSFER_DATASETS": str(coco_root)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "bbox AP" in proc.stdout and "per-category" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_category"}
    assert ("segm" in metrics) == ("mask" in config)
    results = json.loads((out / "coco_results.json").read_text())
    assert {r["category_id"] for r in results} <= {1, 2, 3}

    # evaluating the checkpoint again gives the same numbers ...
    again = tmp_path / "again.json"
    proc = _run(
        [
            REPO / "tools" / "eval_coco.py",
            REPO / "configs" / config,
            "--weights",
            out / "model_final.pth",
            "--output",
            again,
            *tiny,
            f"output_dir={tmp_path / 'eval'}",
        ],
        tmp_path,
        {"RESTRANSFER_DATASETS": str(coco_root)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(again.read_text())["bbox"]["AP"] == pytest.approx(metrics["bbox"]["AP"], nan_ok=True)
    # ... and so does the results file through the --gt/--results mode
    from_file = tmp_path / "from_file.json"
    iou = ["bbox", "segm"] if "mask" in config else ["bbox"]
    proc = _run(
        [
            REPO / "tools" / "eval_coco.py",
            "--gt",
            coco_root / "coco" / "annotations" / "instances_val2017.json",
            "--results",
            out / "coco_results.json",
            "--iou-type",
            *iou,
            "--output",
            from_file,
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for t in iou:
        assert json.loads(from_file.read_text())[t]["AP"] == pytest.approx(metrics[t]["AP"], nan_ok=True)


@pytest.mark.slow
def test_eval_only_uses_the_last_checkpoint(coco_root, tiny_overrides, tmp_path):
    out = tmp_path / "out"
    tiny = tiny_overrides("training", *KEEP_ALL)
    env = {"RESTRANSFER_DATASETS": str(coco_root)}
    cfg = REPO / "configs" / "coco_faster_rcnn_r101_fpn.yaml"
    assert (
        _run(
            [REPO / "tools" / "train_det.py", cfg, *tiny, f"output_dir={out}", "solver.checkpoint_period=1"],
            tmp_path,
            env,
        ).returncode
        == 0
    )
    (out / "metrics.json").unlink()
    proc = _run([REPO / "tools" / "train_det.py", cfg, "--eval-only", *tiny, f"output_dir={out}"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "metrics.json").is_file()


def test_eval_coco_without_arguments_prints_usage(tmp_path):
    proc = _run([REPO / "tools" / "eval_coco.py"], tmp_path)
    assert proc.returncode == 2 and "usage" in proc.stderr
