"""``dlcore.distributed``: data-parallel training over MPI and NCCL, with PyTorch's names.

One process per device, started by an MPI launcher::

    mpiexec -n 4 python train.py          # one machine
    srun -N 2 --ntasks-per-node=4 python train.py   # a Slurm cluster

and in ``train.py``::

    import dlcore.distributed as dist
    from dlcore.nn.parallel import DistributedDataParallel as DDP
    dist.init_process_group()             # "nccl" on GPUs, "mpi" on CPUs
    model = DDP(model)                    # rank 0's weights everywhere; gradients averaged
    sampler = dlcore.data.DistributedSampler(train_set)   # each rank its part

Collectives (:mod:`.collectives`) work in place on Tensors and raise
:class:`DistBackendError` instead of hanging when a peer is gone (:mod:`.process_group`).
"""

from . import algorithms
from .collectives import (Future, Work, all_gather, all_reduce, barrier, broadcast,
                          broadcast_object_list, reduce_scatter)
from .grad_bucket import GradBucket
from .process_group import (DEFAULT_TIMEOUT_S, DistBackendError, DistError, ProcessGroup,
                            ReduceOp, default_group, destroy_process_group, get_backend,
                            get_local_rank, get_rank, get_world_size, init_process_group,
                            is_available, is_initialized, is_mpi_available, is_nccl_available)

__all__ = ["DEFAULT_TIMEOUT_S", "DistBackendError", "DistError", "Future", "GradBucket",
           "ProcessGroup", "ReduceOp", "Work", "algorithms", "all_gather", "all_reduce",
           "barrier", "broadcast", "broadcast_object_list", "default_group",
           "destroy_process_group", "get_backend", "get_local_rank", "get_rank",
           "get_world_size", "init_process_group", "is_available", "is_initialized",
           "is_mpi_available", "is_nccl_available", "reduce_scatter"]
