"""Training loop, checkpoints, schedules, distributed helpers and the inference loop."""
from .checkpoint import Checkpointer
from .inference import evaluate_model, inference_on_dataset, predict_dataset
from .lock import OutputDirLocked
from .trainer import NonFiniteLossError, evaluate_only, train

__all__ = ["train", "evaluate_only", "OutputDirLocked", "NonFiniteLossError", "Checkpointer", "predict_dataset", "evaluate_model", "inference_on_dataset"]
