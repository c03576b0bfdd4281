"""The dataset registry: ``DATASETS.get(name)`` returns a :class:`DatasetSpec`."""

from __future__ import annotations

from visprompt.data.types import DatasetSpec
from visprompt.registry import Registry

DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset spec to the registry (one call per dataset module)."""
    DATASETS.register(spec.name)(spec)
    return spec
