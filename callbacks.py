"""The Keras callbacks train.py adds to fit: checkpoints that are never left half-written, the learning
rate in each epoch's log, and the validation figures of each source.

    callbacks = [LearningRateLogger(), ValidationBySource(datasets["val"], choice_score),
                 SafeCheckpoint(out / "model.keras", monitor="val_choice"), SafeCheckpoint(out / "last.keras")]
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import keras
import numpy as np

from distribute import is_first_process
from evaluate import held_out_metrics
from utils import atomic_path

if TYPE_CHECKING:
    from generator import FaceDataset


class SafeCheckpoint(keras.callbacks.Callback):
    """Save the model after each epoch (or only when `monitor` improves) through a temporary file and a
    rename: a kill or a full disk mid-save never leaves a truncated model behind. Only the first process
    of a JAX cluster keeps the file; the others save alongside it (saving gathers weights from every
    process) into a temporary folder outside the run."""

    def __init__(self, path: Path, monitor: str | None = None, best: float | None = None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, best

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not np.isfinite((logs or {}).get("loss", 0.0)):
            return  # a diverged epoch (TerminateOnNaN stopped it) never replaces a good checkpoint
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None or not np.isfinite(value) or (self.best is not None and value >= self.best):
                return
            self.best = float(value)
        if not is_first_process():
            with tempfile.TemporaryDirectory() as folder:
                self.model.save(Path(folder) / self.path.name)
            return
        with atomic_path(self.path) as temp_path:
            self.model.save(temp_path)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the learning rate at the end of each epoch to the logs (and so to log.csv)."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ValidationBySource(keras.callbacks.Callback):
    """After each epoch, score the validation faces of each source (as evaluate.py does, mirror-averaged) and
    log `val_choice` (choice_score of them: train.py's) and each source's age MAE and gender accuracy, for
    the checkpoint, early stopping and log.csv (callbacks after this one see these logs)."""

    def __init__(self, dataset: FaceDataset, choice_score: Callable[[dict], float]):
        super().__init__()
        self.dataset, self.choice_score = dataset, choice_score

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        metrics = held_out_metrics(self.model, self.dataset)
        logs["val_choice"] = self.choice_score(metrics)
        for source, figures in metrics.items():
            if source != "all":
                logs[f"val_{source}_age_mae"] = figures["age_mae"]
                logs[f"val_{source}_gender_accuracy"] = figures["gender_accuracy"]
        print(f"\nvalidation by source: choice {logs['val_choice']:.3f}; " + "; ".join(
            f"{source} MAE {figures['age_mae']:.2f}, gender {figures['gender_accuracy']:.3f}"
            for source, figures in metrics.items() if source != "all"))
