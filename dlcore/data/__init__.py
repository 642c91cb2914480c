"""``dlcore.data``: datasets, samplers, collation and the DataLoader (PyTorch's names).

>>> from dlcore.data import DataLoader, TensorDataset
>>> loader = DataLoader(TensorDataset(dlcore.randn(100, 3)), batch_size=32, shuffle=True,
...                     generator=0)
>>> len(loader)
4
"""

from . import datasets
from .collate import default_collate
from .distributed import DistributedSampler
from .dataset import Dataset, IterableDataset, Subset, TensorDataset, random_split
from .inspect import DatasetReport, inspect
from .loader import DataLoader
from .sampler import BatchSampler, Generator, RandomSampler, Sampler, SequentialSampler
from .shards import ShardDataset, write_shards

__all__ = ["BatchSampler", "DataLoader", "DatasetReport", "Dataset", "DistributedSampler",
           "Generator", "inspect",
           "IterableDataset", "RandomSampler", "Sampler", "SequentialSampler", "ShardDataset",
           "Subset", "TensorDataset", "datasets", "default_collate", "random_split",
           "write_shards"]
