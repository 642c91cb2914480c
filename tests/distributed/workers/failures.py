"""A rank that fails, for tests/distributed/test_dist_failures.py (under mpiexec -n N).

``failures.py MODE``: the last rank fails in the middle of training, the others go on into
the next all-reduce and would wait there for ever. MODE ``raise``: an uncaught exception
(init_process_group's excepthook aborts the job); ``exit``: the process vanishes
(os._exit, as a killed rank would); ``hang``: it sleeps for ten minutes, so only the
collective timeout (2 s here) can end the job.
"""

from __future__ import annotations

import os
import sys
import time

import dlcore
import dlcore.distributed as dist
import dlcore.nn as nn
import dlcore.nn.functional as F
from dlcore.nn.parallel import DistributedDataParallel as DDP

MODE = sys.argv[1]
dist.init_process_group("mpi", timeout=2 if MODE == "hang" else 300)
R, W = dist.get_rank(), dist.get_world_size()
model = DDP(nn.Linear(4, 3))
opt = dlcore.optim.SGD(model.parameters(), lr=0.1)
for step in range(5):
    if step == 2 and R == W - 1:
        print(f"rank {R} fails ({MODE})", flush=True)
        if MODE == "raise":
            raise ValueError(f"rank {R} gives up at step {step}")
        if MODE == "exit":
            os._exit(7)
        time.sleep(600)
    opt.zero_grad()
    F.mse_loss(model(dlcore.randn(8, 4)), dlcore.zeros(8, 3)).backward()
    opt.step()
print(f"rank {R} finished: unexpected", flush=True)
