"""Dataset readers, few-shot sampling, label noise, transforms and the feature cache."""

from visprompt.data import datasets as _datasets  # noqa: F401  (fills DATASETS)
from visprompt.data.registry import DATASETS, register_dataset
from visprompt.data.types import DatasetSpec, DatasetSplits, Sample

__all__ = ["DATASETS", "DatasetSpec", "DatasetSplits", "Sample", "register_dataset"]
