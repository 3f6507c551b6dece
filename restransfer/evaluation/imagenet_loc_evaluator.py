"""The ILSVRC CLS-LOC protocol as an :class:`~restransfer.evaluation.evaluator.Evaluator`: top-5 guesses made
from the gathered detections (:mod:`restransfer.evaluation.imagenet_loc_guesses`), scored with the devkit's
``eval_clsloc.m`` (:mod:`restransfer.evaluation.imagenet_loc`) on a json of ``datasets/prepare_imagenet_loc.py``
(whose ``devkit_bbox`` fields keep the devkit's boxes exactly); writes both submission files and
``metrics.json``.

Registered as ``imagenet_loc`` for test sets of format ``imagenet_loc``."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import numpy as np

from ..data.ilsvrc import read_synsets
from ..data.imagenet_loc import ground_truth_from_coco, read_blacklist
from ..errors import ConfigError
from .evaluator import DatasetEvaluator, PathLike, register_evaluator
from .imagenet_loc import LocGroundTruth, evaluate_localization, pack_ground_truth
from .imagenet_loc_guesses import MODES, classifier_guesses, detector_guesses, gt_class_guesses, label_wnids
from .imagenet_loc_io import LocSubmission, write_devkit_submission, write_kaggle_submission
from .metrics_file import write_metrics

__all__ = ["ImageNetLocEvaluator", "LOC_KEYS"]

LOC_KEYS = ("top1_cls_error", "top5_cls_error", "top1_loc_error", "top5_loc_error", "gt_class_loc_error")


class ImageNetLocEvaluator(DatasetEvaluator):
    """Top-5 localization error of a detector's predictions on a converted CLS-LOC val json.

    Args:
        dataset: the test dataset (``coco`` the converted json with ``wnid`` categories, ``image_ids``,
            ``label_to_cat_id``).
        output_dir: where ``loc_submission.txt``, ``loc_submission.csv`` and ``metrics.json`` go (None: no files).
        metrics_path: ``metrics.json``'s path instead.
        mode: ``detector``, ``classifier`` or ``gt_class`` (default: ``classifier`` when classifier scores are
            given, else ``detector``). The ``gt_class`` guesses are always scored too, as ``gt_class_loc_error``.
        classifier_scores: (N, C) classifier scores, rows in the dataset's image order (``dataset.image_ids``),
            or a function that computes them (called on the main process only, when the guesses are made).
        classifier_synsets: class list whose order is the classifier's column order (default: sorted WNIDs).
        blacklist: the devkit's validation blacklist.
        options: other protocols' options, ignored.

    The metrics are percentages (``top1_cls_error``, ``top5_cls_error``, ``top1_loc_error``, ``top5_loc_error``,
    ``gt_class_loc_error``); ``log.jsonl`` gets them as ``imagenet_loc/<key>``, the best model is the one of
    lowest ``imagenet_loc/top5_loc_error``.
    """

    name = "imagenet_loc"
    main_metric = "imagenet_loc/top5_loc_error"
    higher_is_better = False

    def configure(
        self,
        *,
        mode: Optional[str] = None,
        classifier_scores: Union[None, np.ndarray, Callable[[], np.ndarray]] = None,
        classifier_synsets: Optional[PathLike] = None,
        blacklist: Optional[PathLike] = None,
        **options: Any,
    ) -> None:
        mode = mode or ("classifier" if classifier_scores is not None else "detector")
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if mode == "classifier" and classifier_scores is None:
            raise ConfigError("mode 'classifier' needs classifier scores (a saved .npy / text file) or a classifier")
        self.mode = mode
        self.classifier_scores, self.classifier_synsets, self.blacklist = (
            classifier_scores,
            classifier_synsets,
            blacklist,
        )
        self.ground_truth: Optional[LocGroundTruth] = None
        self.submission: Optional[LocSubmission] = None
        self.blacklisted: Optional[np.ndarray] = None

    def compute(self, predictions: List[Dict[str, Any]]) -> Dict[str, Any]:
        dataset = self.dataset
        images, synsets = ground_truth_from_coco(dataset.coco.dataset)
        gt_ids = sorted(int(i) for i in dataset.coco.getImgIds())
        # every image gets guesses, also one without any detection (the whole-image fallback)
        by_id = {int(p["image_id"]): p for p in predictions}
        empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
        preds = [by_id.get(int(k), {**empty, "image_id": int(k)}) for k in dataset.image_ids]
        self.predictions = preds
        sizes = {int(k): (im["width"], im["height"]) for k, im in dataset.coco.imgs.items()}
        lut = label_wnids(dataset)
        gt = pack_ground_truth(images, synsets)
        black = read_blacklist(self.blacklist, len(images)) if self.blacklist is not None else None

        gt_guesses = gt_class_guesses(preds, {k: im.labels for k, im in zip(gt_ids, images)}, lut, sizes)
        gt_guesses = gt_guesses.reorder(gt_ids)
        gt_metrics = evaluate_localization(gt, gt_guesses.to_submission(synsets), blacklist=black)
        if self.mode == "gt_class":
            metrics: Dict[str, Any] = {"gt_class_loc_error": gt_metrics["top5_loc_error"]}
            guesses = gt_guesses
        else:
            if self.mode == "detector":
                guesses = detector_guesses(preds, lut)
            else:
                scores = self.classifier_scores() if callable(self.classifier_scores) else self.classifier_scores
                columns = read_synsets(self.classifier_synsets).wnids if self.classifier_synsets is not None else None
                guesses = classifier_guesses(preds, scores, lut, sizes, classifier_wnids=columns)
            guesses = guesses.reorder(gt_ids)
            metrics = evaluate_localization(gt, guesses.to_submission(synsets), blacklist=black)
            metrics["gt_class_loc_error"] = gt_metrics["top5_loc_error"]
        if self.output_dir is not None:
            write_devkit_submission(self.output_dir / "loc_submission.txt", guesses, synsets)
            write_kaggle_submission(self.output_dir / "loc_submission.csv", guesses, gt.names)
        if self.metrics_path is not None:
            write_metrics(metrics, self.metrics_path)
        self.metrics, self.ground_truth, self.blacklisted = metrics, gt, black
        self.submission = guesses.to_submission(synsets)
        return metrics

    def format(self, metrics: Mapping[str, Any]) -> str:
        return "\n".join(f"{key:>20s}: {metrics[key]:6.2f} %" for key in LOC_KEYS if key in metrics)


register_evaluator("imagenet_loc", ImageNetLocEvaluator, formats=("imagenet_loc",))
