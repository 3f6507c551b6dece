"""The ResNet paper's full test-time system (He et al. 2015, appendix B) around trained detectors.

:class:`DetectionSystem` takes one or more :class:`~restransfer.models.Detector` s (an ensemble) and runs,
per image and per test view (scale x flip):

1. each model's backbone and RPN; an ensemble scores the *union* of its models' proposals with every
   model's box head and averages the class probabilities and decoded boxes (the paper's ensemble);
2. with ``box_refinement``, each region's regressed box (of its best class) is pooled and scored again,
   the new predictions are added to the first ones, and the union goes through per-class NMS at
   ``refinement_nms`` (0.3) and box voting at ``box_voting_iou``; without it, torchvision's
   post-processing (per-class NMS at the model's ``nms_thresh``);
3. with several views (``min_sizes``, ``flip``; ``merge="union"``) the views' detections are mapped back
   to the image and merged by per-class NMS at the model's threshold and box voting; with
   ``merge="maxout"`` (C4) the proposals come from the model's own test scale and every region is pooled
   from two adjacent scales of the ``min_sizes`` pyramid (:func:`~restransfer.models.tta.maxout_scale_pair`),
   merged by element-wise max before res5;
4. masks are predicted for the final boxes in every view and by every model, and averaged.

With one model, one view at the model's own test size and no refinement it gives the plain model's
detections. It has the detector's inference interface (``system(images)`` -> one dict per image) and
uses each model's inference fast paths (build the models with ``optimize_for_inference`` first).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import maskrcnn_inference
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from ..errors import ConfigError
from .build import build_eval_model, system_kwargs
from .checkpoint import checkpoint_class_names
from .context import RegionsWithContext
from .refinement import class_candidates, refined_boxes, select_detections
from .tta import flip_boxes, maxout_scale_pair

__all__ = ["DetectionSystem", "MERGES", "build_test_model", "weights_list"]

MERGES = ("union", "maxout")


class _View(NamedTuple):
    features: Dict[str, Tensor]
    proposals: Tensor
    size: Tuple[int, int]  # (H, W) of the resized image
    flip: bool


class DetectionSystem(nn.Module):
    """Detectors with the paper's test-time extras (see the module docstring).

    Args:
        detectors: one or more eval-mode detectors with the same classes and pixel convention.
        box_refinement: score each region's regressed box again (union with the first predictions,
            NMS at ``refinement_nms``, box voting at ``box_voting_iou``).
        min_sizes: test scales (short side); empty: the first model's own test size.
        max_size: cap of the long side at every scale (default: the model's).
        flip: add each scale's horizontal mirror.
        merge: ``"union"`` or ``"maxout"`` (C4 detectors only).
    """

    def __init__(
        self,
        detectors: Sequence[nn.Module],
        *,
        box_refinement: bool = False,
        refinement_nms: float = 0.3,
        box_voting_iou: float = 0.5,
        min_sizes: Sequence[int] = (),
        max_size: Optional[int] = None,
        flip: bool = False,
        merge: str = "union",
    ) -> None:
        super().__init__()
        if not detectors:
            raise ValueError("DetectionSystem needs at least one detector")
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {merge!r}")
        first = detectors[0]
        for i, d in enumerate(detectors[1:], 1):
            if d.class_names != first.class_names or d.num_classes != first.num_classes:
                raise ValueError(
                    f"ensemble model {i} has classes {d.class_names}, model 0 {first.class_names}; "
                    "an ensemble needs models trained on the same classes"
                )
            if d.pixel_convention != first.pixel_convention:
                raise ValueError(
                    f"ensemble model {i} expects input {d.pixel_convention}, model 0 "
                    f"{first.pixel_convention}; an ensemble needs one input convention"
                )
        if merge == "maxout" and any(d.head != "c4" for d in detectors):
            raise ValueError(
                "merge 'maxout' pools res4 features at several scales for the C4 head; use 'union' with FPN"
            )
        self.detectors = nn.ModuleList(detectors)
        self.transform = first.transform  # the output convention (deferred mask pasting) follows the first model
        self.num_classes, self.class_names = first.num_classes, first.class_names
        self.arch, self.head, self.pixel_convention = first.arch, first.head, first.pixel_convention
        self.box_refinement, self.refinement_nms, self.box_voting_iou = box_refinement, refinement_nms, box_voting_iou
        self.merge, self.flip = merge, flip
        self.min_sizes = [int(s) for s in min_sizes] or [int(first.transform.min_size[-1])]
        self.max_size = int(max_size or first.transform.max_size)
        self._transforms: Dict[int, nn.Module] = {}
        self.eval()

    @property
    def roi_heads(self) -> nn.Module:
        """The first model's RoI heads: their ``score_thresh``, ``nms_thresh`` and ``detections_per_img``
        are the system's."""
        return self.detectors[0].roi_heads

    @property
    def with_masks(self) -> bool:
        return self.roi_heads.has_mask()

    def views(self) -> List[Tuple[int, bool]]:
        """The (short side, flipped) test views the union merge runs."""
        return [(s, f) for s in self.min_sizes for f in ((False, True) if self.flip else (False,))]

    # --------------------------------------------------------------------------------------- views

    def _transform(self, detector: nn.Module, min_size: int) -> nn.Module:
        own = detector.transform
        if own.min_size[-1] == min_size and own.max_size == self.max_size:
            return own
        key = id(detector) * 100003 + min_size
        if key not in self._transforms:
            self._transforms[key] = type(own)(
                **{**own.options(), "min_size": min_size, "max_size": self.max_size}
            ).eval()
        return self._transforms[key]

    def _view(self, detector: nn.Module, image: Tensor, min_size: int, flip: bool, proposals: bool = True) -> _View:
        image_list, _ = self._transform(detector, min_size)([image.flip(-1) if flip else image])
        features = detector.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        props = detector.rpn(image_list, features)[0][0] if proposals else None
        # RoIAlign reads float32 NCHW maps (what the RoI heads' input hook gives the plain model)
        features = OrderedDict(
            (k, v.to(dtype=torch.float32, memory_format=torch.contiguous_format)) for k, v in features.items()
        )
        return _View(features, props, tuple(image_list.image_sizes[0]), flip)

    # ------------------------------------------------------------------------------------- scoring

    def _score(self, views: Sequence[_View], boxes: Tensor, pooled: Optional[Sequence[Tensor]] = None):
        """Every model's class probabilities ``(R, K+1)`` and decoded, clipped boxes ``(R, K+1, 4)`` for
        ``boxes`` (the views' coordinates), averaged over the models; ``pooled``: RoI features per model
        instead of pooling from the views (maxout)."""
        probs, decoded = [], []
        for i, (d, v) in enumerate(zip(self.detectors, views)):
            rh = d.roi_heads
            x = pooled[i] if pooled is not None else rh.box_roi_pool(v.features, [boxes], [v.size])
            logits, regression = rh.box_predictor(rh.box_head(x))
            probs.append(F.softmax(logits, -1))
            decoded.append(rh.box_coder.decode(regression, [boxes]))
        size = views[0].size
        return torch.stack(probs).mean(0), box_ops.clip_boxes_to_image(torch.stack(decoded).mean(0), size)

    def _maxout_pooled(
        self,
        pyramids: Sequence[Sequence[_View]],
        boxes: Tensor,
        image_size: Tuple[int, int],
        test_size: Tuple[int, int],
    ) -> List[Tensor]:
        """Per model: RoI features of ``boxes`` (test-view coordinates) pooled at their two maxout scales of
        the model's pyramid views and merged by element-wise max."""
        orig = resize_boxes(boxes, test_size, image_size)
        factors = [v.size[0] / image_size[0] for v in pyramids[0]]
        best, other = maxout_scale_pair(orig[:, 2] - orig[:, 0], orig[:, 3] - orig[:, 1], factors)
        # global context (when the models have it) is pooled from the pyramid level nearest the test scale
        nearest = min(range(len(factors)), key=lambda i: abs(pyramids[0][i].size[0] - test_size[0]))
        idx = torch.arange(boxes.shape[0], device=boxes.device)
        pooled = []
        for d, views in zip(self.detectors, pyramids):
            pool = d.roi_heads.box_roi_pool
            at_scale = [pool(v.features, [resize_boxes(orig, image_size, v.size)], [v.size]) for v in views]
            with_context = isinstance(at_scale[0], RegionsWithContext)
            stack = torch.stack([a.regions if with_context else a for a in at_scale])  # (S, R, C, P, P)
            merged = torch.maximum(stack[best, idx], stack[other, idx])
            pooled.append(at_scale[nearest]._replace(regions=merged) if with_context else merged)
        return pooled

    def _detect_view(
        self, views: Sequence[_View], pooled_fn: Optional[Callable[[Tensor], Tensor]] = None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Detections (boxes in the views' coordinates, scores, labels) of one view of every model."""
        rh = self.roi_heads
        proposals = torch.cat([v.proposals for v in views])  # an ensemble scores the union of its proposals
        probs, boxes = self._score(views, proposals, pooled_fn(proposals) if pooled_fn else None)
        cand = class_candidates(probs, boxes, rh.score_thresh)
        if not self.box_refinement:
            return select_detections(*cand, rh.nms_thresh, rh.detections_per_img)
        again = refined_boxes(probs, boxes)
        probs2, boxes2 = self._score(views, again, pooled_fn(again) if pooled_fn else None)
        cand2 = class_candidates(probs2, boxes2, rh.score_thresh)
        union = [torch.cat([a, b]) for a, b in zip(cand, cand2)]
        return select_detections(*union, self.refinement_nms, rh.detections_per_img, voting_iou=self.box_voting_iou)

    def _masks(self, views: Sequence[_View], boxes: Tensor, labels: Tensor) -> Tensor:
        """Mask probabilities ``(N, 1, M, M)`` of ``boxes`` (these views' coordinates) from every model."""
        probs = []
        for d, v in zip(self.detectors, views):
            rh = d.roi_heads
            logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(v.features, [boxes], [v.size])))
            probs.append(maskrcnn_inference(logits, [labels])[0])
        return torch.stack(probs).mean(0)

    # ----------------------------------------------------------------------------------- detection

    def _to_image(self, boxes: Tensor, view: _View, image_size: Tuple[int, int]) -> Tensor:
        if view.flip:
            boxes = flip_boxes(boxes, view.size[1])
        return resize_boxes(boxes, view.size, image_size)

    def _to_view(self, boxes: Tensor, view: _View, image_size: Tuple[int, int]) -> Tensor:
        boxes = resize_boxes(boxes, image_size, view.size)
        return flip_boxes(boxes, view.size[1]) if view.flip else boxes

    def _detect(self, image: Tensor) -> Dict[str, Tensor]:
        image_size = tuple(image.shape[-2:])
        masks = None
        if self.merge == "maxout":
            own = int(self.detectors[0].transform.min_size[-1])
            views = [self._view(d, image, own, False) for d in self.detectors]
            pyramids = [self._pyramid(d, image) for d in self.detectors]
            boxes, scores, labels = self._detect_view(
                views, lambda b: self._maxout_pooled(pyramids, b, image_size, views[0].size)
            )
            all_views = [views]
        else:
            all_views, found = [], []
            for min_size, flip in self.views():
                views = [self._view(d, image, min_size, flip) for d in self.detectors]
                all_views.append(views)
                found.append(self._detect_view(views))
            if len(all_views) == 1:
                boxes, scores, labels = found[0]
            else:
                union = [torch.cat([self._to_image(f[0], v[0], image_size) for f, v in zip(found, all_views)])]
                union += [torch.cat([f[k] for f in found]) for k in (1, 2)]
                boxes, scores, labels = select_detections(
                    *union, self.roi_heads.nms_thresh, self.roi_heads.detections_per_img, voting_iou=self.box_voting_iou
                )
                if self.with_masks:
                    masks = torch.stack(
                        [self._view_masks(v, self._to_view(boxes, v[0], image_size), labels) for v in all_views]
                    ).mean(0)
                return self._output(boxes, scores, labels, masks, image_size)
        if self.with_masks:
            masks = self._masks(all_views[0], boxes, labels)
        return self._output(self._to_image(boxes, all_views[0][0], image_size), scores, labels, masks, image_size)

    def _pyramid(self, detector: nn.Module, image: Tensor) -> List[_View]:
        """The maxout feature pyramid: one view per distinct resized size (scales capped by ``max_size``
        can coincide), smallest first."""
        views: List[_View] = []
        for min_size in sorted(self.min_sizes):
            view = self._view(detector, image, min_size, False, proposals=False)
            if not views or view.size[0] > views[-1].size[0]:
                views.append(view)
        return views

    def _view_masks(self, views: Sequence[_View], boxes: Tensor, labels: Tensor) -> Tensor:
        probs = self._masks(views, boxes, labels)
        return probs.flip(-1) if views[0].flip else probs

    def _output(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, masks: Optional[Tensor], image_size: Tuple[int, int]
    ) -> Dict[str, Tensor]:
        out = {"boxes": boxes, "labels": labels, "scores": scores}
        if masks is not None:
            if self.transform.defer_mask_paste:
                out["mask_probs"] = masks
            else:
                out["masks"] = self.transform.paste_masks(masks, boxes, image_size)
        return out

    def forward(
        self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None
    ) -> List[Dict[str, Tensor]]:
        if self.training or targets is not None:
            raise RuntimeError("DetectionSystem is for inference: train the detectors themselves")
        return [self._detect(image) for image in images]


def weights_list(weights: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    """``None``, one checkpoint or several (an ensemble) -> a list of paths."""
    if weights is None:
        return []
    if isinstance(weights, (str, os.PathLike)):
        return [str(weights)]
    return [str(w) for w in weights]


def build_test_model(
    cfg: DictConfig,
    weights: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    class_names: Optional[List[str]],
    device: torch.device,
    *,
    optimize: Optional[bool] = None,
    precision: Optional[str] = None,
) -> nn.Module:
    """The model evaluation and the Predictor run for ``cfg`` and ``weights`` (one checkpoint, several for an
    ensemble, or ``None`` for ``model.weights``): the plain inference-optimized detector when ``cfg.test``
    asks for no extra and one model is given, else a :class:`DetectionSystem` over one such detector per
    checkpoint. Ensemble members must have the same classes and pixel convention (``ConfigError`` naming the
    files otherwise). ``optimize`` and ``precision`` as in :func:`restransfer.models.build.build_eval_model`.

    This is the one place that chooses between the plain detector and the test-time system: evaluation,
    the Predictor and the tools all build their test model here."""
    paths = weights_list(weights)
    kwargs = system_kwargs(cfg)
    options = dict(optimize=optimize, precision=precision)
    if len(paths) <= 1 and kwargs is None:
        return build_eval_model(cfg, paths[0] if paths else None, class_names, device, **options)
    saved = [checkpoint_class_names(p) for p in paths]
    for p, names in zip(paths[1:], saved[1:]):
        if saved[0] is not None and names is not None and list(names) != list(saved[0]):
            raise ConfigError(
                f"ensemble: {p} was trained on classes {list(names)} but {paths[0]} on "
                f"{list(saved[0])}; ensemble models must share their classes"
            )
    detectors = [build_eval_model(cfg, p, class_names, device, **options) for p in (paths or [None])]
    for p, d in zip(paths[1:], detectors[1:]):
        if d.pixel_convention != detectors[0].pixel_convention:
            raise ConfigError(
                f"ensemble: {p} expects input {d.pixel_convention} but {paths[0]} "
                f"{detectors[0].pixel_convention}; ensemble models must share their input convention"
            )
    return DetectionSystem(detectors, **(kwargs or {}))
