"""Feature-cache-aware order of a sweep's runs: each cache entry computed once, before its readers.

Runs that share a backbone, dataset, data root, shots and data seed read the
same cached training features, and runs that share a backbone and dataset the
same test features. The first run of each such group (its *leader*; trainable
methods are preferred, since only they cache the augmented views) runs before
the others of its group, which start once the leader has finished its first
epoch (its features are then on disk) or has ended. So the image encoder runs
once per (dataset, seed), not once per run, and never twice at the same time
for the same images.
"""

from __future__ import annotations

import json
from collections import deque

from visprompt.config import RunConfig
from visprompt.experiments.sweep import SweepRun


def feature_keys(cfg: RunConfig) -> tuple[str, ...]:
    """Keys of the feature-cache entries a run reads: its training set's and its test set's.

    Runs with equal keys read the same cached features (the keys mirror what
    the cache entries depend on: backbone weights and precision, dataset and
    root, few-shot draw, views, patch tokens). Runs without the cache share
    nothing.
    """
    if not cfg.use_cache:
        return ()
    backbone = cfg.backbone.model_dump(mode="json", exclude={"device"})
    common = {
        "backbone": backbone,
        "precision": cfg.precision,
        "dataset": cfg.data.dataset,
        "root": cfg.data.root,
        "cache_dir": cfg.data.cache_dir,
        "allow_duplicates": cfg.data.allow_duplicates,
        "patches": cfg.method.requirements().patch_tokens,
    }
    train = {
        **common,
        "shots": cfg.data.shots,
        "seed": cfg.data.seed,
        "allow_fewer": cfg.data.allow_fewer,
        "num_views": cfg.data.num_views,
        "protocol": cfg.noise.protocol,
    }
    if cfg.noise.protocol == "balanced":  # the noisy images themselves depend on the noise
        train.update(
            noise_type=cfg.noise.type, noise_rate=cfg.noise.rate, pool_draw=cfg.noise.pool_draw
        )
    return (
        json.dumps(["train", train], sort_keys=True),
        json.dumps(["test", common], sort_keys=True),
    )


def _trainable(cfg: RunConfig) -> bool:
    from visprompt.methods import METHOD_REGISTRY

    return bool(getattr(METHOD_REGISTRY.get(cfg.method.name).cls, "trainable", True))


class CacheScheduler:
    """Orders runs so that each feature-cache entry is computed by one run, before its readers.

    A key is *free* (no run has started with it), *led* (its leader is running
    and may still be computing the features) or *warm* (the leader finished
    an epoch or ended, so the features are on disk). A run may start when none
    of its keys is led by another run.
    """

    def __init__(self, runs: list[SweepRun]) -> None:
        # trainable runs first: only they compute (and so cache) the augmented views
        order = sorted(range(len(runs)), key=lambda i: (not _trainable(runs[i].config), i))
        self.queue: deque[SweepRun] = deque(runs[i] for i in order)
        self.keys = {r.run_id: feature_keys(r.config) for r in runs}
        self.leader: dict[str, str] = {}  # key -> run id of its leader
        self.warm: set[str] = set()

    def __len__(self) -> int:
        return len(self.queue)

    def _blocked(self, run: SweepRun) -> bool:
        return any(k in self.leader and k not in self.warm for k in self.keys[run.run_id])

    def next_run(self, force: bool = False) -> SweepRun | None:
        """The first queued run that may start now (or the first at all with ``force``)."""
        for i, run in enumerate(self.queue):
            if force or not self._blocked(run):
                del self.queue[i]
                for key in self.keys[run.run_id]:
                    self.leader.setdefault(key, run.run_id)
                return run
        return None

    def progressed(self, run_id: str) -> None:
        """The run finished an epoch or ended well: the keys it leads are warm."""
        for key in self.keys.get(run_id, ()):
            if self.leader.get(key) == run_id:
                self.warm.add(key)

    def failed(self, run_id: str) -> None:
        """The run ended badly: keys it led and did not warm are free for a new leader."""
        for key in self.keys.get(run_id, ()):
            if self.leader.get(key) == run_id and key not in self.warm:
                del self.leader[key]
