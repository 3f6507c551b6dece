"""Training loop, checkpoints, schedules, distributed helpers and the inference loop."""
from .checkpoint import Checkpointer
from .inference import evaluate_model, inference_on_dataset, predict_dataset
from .trainer import NonFiniteLossError, train

__all__ = ["train", "NonFiniteLossError", "Checkpointer", "predict_dataset", "evaluate_model", "inference_on_dataset"]
