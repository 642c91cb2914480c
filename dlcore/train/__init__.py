"""The training jobs behind ``dlcore train``: one module per task (``classify``: cnn and
rnn; ``gan``; ``adding``) on the shared loop, checkpoints and metrics of ``common``.

``--amp`` runs each task's forward and loss under ``dlcore.autocast(device_type)``: bfloat16
on the CPU (PyTorch's recipe; no loss scaling), float16 with its backward and optimizer steps
through a ``dlcore.amp.GradScaler`` on cuda and emu. (On the CPU, bfloat16 is ml_dtypes'
NumPy dtype without BLAS, its GEMMs widened to float32, so --amp there is a correctness path,
not a speed-up.)

Under ``mpiexec -n N`` every task runs data-parallel, its models in DistributedDataParallel
and ``--batch-size`` the global batch split over the ranks: see :mod:`.parallel`.
"""

from .common import Interrupted, Options, ResumeError, Task, TrainingDiverged, fit, resolve_device
from .parallel import OptionError, Ranks

__all__ = ["Interrupted", "OptionError", "Options", "Ranks", "ResumeError", "Task",
           "TrainingDiverged", "fit", "resolve_device"]
