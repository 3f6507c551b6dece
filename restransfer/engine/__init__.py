"""Training loop, checkpoints, schedules, the output folder's lock, and the protocol run (:mod:`.evaluate`)."""

from ..inference.loop import inference_on_dataset
from .checkpoint import Checkpointer
from .evaluate import evaluate_model, predict_dataset  # not evaluate(): the name is the submodule's
from .lock import OutputDirLocked
from .trainer import NonFiniteLossError, evaluate_only, train

__all__ = [
    "train",
    "evaluate_only",
    "OutputDirLocked",
    "NonFiniteLossError",
    "Checkpointer",
    "predict_dataset",
    "evaluate_model",
    "inference_on_dataset",
]
