"""Speed and agreement measurement: a config's detector against torchvision's identical network
(:mod:`.model`, :mod:`.reference`, :mod:`.agreement`, :mod:`.memory`), the training data loader's
throughput (:mod:`.data`), the COCO evaluation engines (:mod:`.coco_eval`), the ImageNet-DET and CLS-LOC
evaluations (:mod:`.imagenet_eval`), the synthetic inputs they run on (:mod:`.synthetic`) and their reports
(:mod:`.report`)."""
from .agreement import detection_agreement
from .data import LoaderMeasurement, missing_training_data, run_loader_benchmark, time_loader
from .imagenet_eval import (
    LOC_EVALUATE_STEP, DetEvalTimings, LocEvalTimings, run_det_eval_benchmark, run_loc_eval_benchmark,
    synthetic_det_eval_set, synthetic_loc_eval_set,
)
from .model import Measurement, run_benchmark
from .reference import randomize_weights, reference_incompatibility, torchvision_reference
from .report import as_json, format_loader_report, format_report, loader_report_json, machine_description
from .synthetic import GeneratedFolder, generate_coco_folder, synthetic_batch

__all__ = ["Measurement", "run_benchmark", "torchvision_reference", "reference_incompatibility",
           "randomize_weights", "detection_agreement", "synthetic_batch", "format_report", "machine_description",
           "as_json", "GeneratedFolder", "LoaderMeasurement", "generate_coco_folder", "missing_training_data",
           "time_loader", "run_loader_benchmark", "format_loader_report", "loader_report_json",
           "synthetic_det_eval_set", "DetEvalTimings", "run_det_eval_benchmark", "synthetic_loc_eval_set",
           "LocEvalTimings", "run_loc_eval_benchmark", "LOC_EVALUATE_STEP"]
