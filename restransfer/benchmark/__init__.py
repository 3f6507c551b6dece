"""Speed and agreement measurement: a config's detector against torchvision's identical network
and torchvision + torch.compile (:mod:`.model`, :mod:`.reference`, :mod:`.agreement`), each model's peak memory
in a fresh process (:mod:`.memory`), the machine it ran on (:mod:`.machine`), the training data loader's
throughput (:mod:`.data`), the COCO evaluation engines (:mod:`.coco_eval`), the ImageNet-DET and CLS-LOC
evaluations (:mod:`.imagenet_eval`), the synthetic inputs they run on (:mod:`.synthetic`) and their reports
(:mod:`.report`)."""

from . import imagenet_eval
from .agreement import detection_agreement
from .data import LoaderMeasurement, missing_training_data, run_loader_benchmark, time_loader
from .imagenet_eval import *  # noqa: F403 - its __all__ is part of this package's
from .machine import cpu_info, load_average, machine_description, machine_info
from .memory import MemoryPeak, in_fresh_process, measure_peak
from .model import COMPILE_TIME_DEFINITION, Measurement, run_benchmark
from .reference import randomize_weights, reference_incompatibility, torchvision_reference
from .report import as_json, format_loader_report, format_report, loader_report_json
from .synthetic import GeneratedFolder, generate_coco_folder, synthetic_batch

__all__ = [
    "Measurement",
    "run_benchmark",
    "torchvision_reference",
    "reference_incompatibility",
    "randomize_weights",
    "detection_agreement",
    "synthetic_batch",
    "format_report",
    "machine_description",
    "as_json",
    "GeneratedFolder",
    "LoaderMeasurement",
    "generate_coco_folder",
    "missing_training_data",
    "time_loader",
    "run_loader_benchmark",
    "format_loader_report",
    "loader_report_json",
    *imagenet_eval.__all__,
    "cpu_info",
    "load_average",
    "machine_info",
    "MemoryPeak",
    "measure_peak",
    "in_fresh_process",
    "COMPILE_TIME_DEFINITION",
]
