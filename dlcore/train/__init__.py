"""The training jobs behind ``dlcore train``: one module per task (``classify``: cnn and
rnn; ``gan``; ``adding``) on the shared loop, checkpoints and metrics of ``common``."""

from .common import Options, ResumeError, Task, TrainingDiverged, fit, resolve_device

__all__ = ["Options", "ResumeError", "Task", "TrainingDiverged", "fit", "resolve_device"]
