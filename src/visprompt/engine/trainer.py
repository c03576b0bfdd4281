"""The training loop. It knows epochs, batches and checkpoints, and no method's math.

Every epoch starts from a seed derived from (run seed, epoch), and draws its
views and batch order from generators seeded the same way, so an epoch's result
depends only on the model state it starts from: a run resumed from the
checkpoint of epoch e ends exactly where the uninterrupted run ends.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from visprompt.config import OptimConfig
from visprompt.data.features import FeatureBatch, LiveFeatures, SplitFeatures
from visprompt.engine.evaluate import autocast_context, predict_logits
from visprompt.engine.optim import build_optimizer
from visprompt.errors import VispromptError
from visprompt.methods.base import EpochContext, PromptMethod, TrainBatch


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**62)


class NonFiniteLoss(VispromptError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainData:
    """What the trainer trains on.

    Attributes:
        features: cached features of the training set (clean view + V views).
        labels: (N,) given (possibly noisy) labels used for training.
        true_labels: (N,) true labels when known (synthetic noise), for logging only.
        live: encode freshly augmented images each step instead of cached views.
    """

    features: SplitFeatures
    labels: torch.Tensor
    true_labels: torch.Tensor | None = None
    live: LiveFeatures | None = None


class Trainer:
    """Runs epochs of a method on cached features, calling back after each epoch.

    Args:
        method: the method (its parameters are optimised).
        data: training features and labels.
        optim: optimiser/schedule settings.
        seed: the run's training seed.
        precision: ``fp32``, ``amp`` or ``fp16`` (autocast only on GPU).
        eval_batch_size: batch size of no-gradient passes (purification, evaluation).
        progress: show a progress bar per epoch.
    """

    def __init__(
        self,
        method: PromptMethod,
        data: TrainData,
        optim: OptimConfig,
        seed: int,
        precision: str = "fp32",
        eval_batch_size: int = 256,
        progress: bool = True,
    ) -> None:
        self.method = method
        self.data = data
        self.cfg = optim
        self.seed = seed
        self.precision = precision
        self.eval_batch_size = eval_batch_size
        self.progress = progress
        self.device = method.backbone.device
        self.optimizer, self.scheduler = build_optimizer(method.parameters(), optim)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "method": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "method_extra": self.method.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.method.load_extra_state(state.get("method_extra") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ loop
    def predict_train(self) -> torch.Tensor:
        """(N, K) probabilities of the training set under the current model (clean view)."""
        logits = predict_logits(
            self.method, self.data.features.plain_view(), self.eval_batch_size, self.precision
        )
        return logits.softmax(dim=-1)

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; returns its metrics (loss, accuracies, plan statistics, seconds)."""
        start = time.perf_counter()
        seed = epoch_seed(self.seed, epoch)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed + 1)
        labels = self.data.labels
        n = labels.numel()
        ctx = EpochContext(
            epoch=epoch,
            num_epochs=self.cfg.epochs,
            batch_size=self.cfg.batch_size,
            labels=labels,
            true_labels=self.data.true_labels,
            generator=generator,
            predict_train=self.predict_train,
            drop_last=self.cfg.drop_last,
        )
        self.method.eval()
        plan = self.method.start_epoch(ctx)
        views = self.data.features.views
        view_index = (
            torch.randint(views.shape[0], (n,), generator=generator)
            if views is not None
            else torch.zeros(n, dtype=torch.long)
        )
        self.method.train()
        totals = {"loss": 0.0, "correct": 0.0, "correct_true": 0.0, "seen": 0}
        parts_sum: dict[str, float] = {}
        bar = tqdm(
            plan.batches,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not self.progress,
            leave=False,
        )
        for step, idx in enumerate(bar):
            feats = self._batch_features(idx, view_index)
            batch = TrainBatch(
                features=feats.to(self.device),
                labels=labels[idx].to(self.device),
                index=idx.to(self.device),
                group=plan.group[idx].to(self.device),
            )
            with autocast_context(self.device, self.precision):
                out = self.method.training_loss(batch)
            if not torch.isfinite(out.loss):
                raise NonFiniteLoss(
                    f"loss became {out.loss.item()} at epoch {epoch + 1}, batch {step + 1}; "
                    "the last good checkpoint is kept - lower optim.lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            b = idx.numel()
            pred = out.logits.detach().argmax(dim=-1).cpu()
            totals["loss"] += out.loss.item() * b
            totals["correct"] += (pred == labels[idx]).sum().item()
            if self.data.true_labels is not None:
                totals["correct_true"] += (pred == self.data.true_labels[idx]).sum().item()
            totals["seen"] += b
            for key, value in out.parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value * b
            bar.set_postfix(
                loss=f"{totals['loss'] / totals['seen']:.4f}",
                acc=f"{100 * totals['correct'] / totals['seen']:.1f}",
            )
        bar.close()
        # A finite loss can still leave non-finite parameters (e.g. a huge step); the
        # checkpoint written after this epoch must never hold them.
        bad = [name for name, p in self.method.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLoss(
                f"parameters {', '.join(bad[:3])} became non-finite in epoch {epoch + 1}; "
                "the last good checkpoint is kept - lower optim.lr or check the data"
            )
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # an epoch without batches (a fitted method such as linear-probe, whose
            # solver sets the weights) steps the schedule but never the optimiser;
            # torch would warn that the order is wrong, and nothing is
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        seen = max(totals["seen"], 1)
        metrics: dict[str, float] = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": totals["loss"] / seen,
            "train_acc": 100.0 * totals["correct"] / seen,
            # samples trained on this epoch (fewer than N when optim.drop_last drops some)
            "train_samples": totals["seen"],
        }
        if self.data.true_labels is not None:
            metrics["train_acc_true"] = 100.0 * totals["correct_true"] / seen
        metrics.update({k: v / seen for k, v in parts_sum.items()})
        metrics.update(plan.stats)
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    def _batch_features(self, idx: torch.Tensor, view_index: torch.Tensor) -> FeatureBatch:
        if self.data.live is not None:
            return self.data.live.batch(idx)
        return self.data.features.view(view_index[idx], idx)

    def fit(
        self,
        start_epoch: int = 0,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        """Train epochs ``start_epoch .. epochs-1``, calling ``on_epoch(epoch, metrics)``."""
        for epoch in range(start_epoch, self.cfg.epochs):
            metrics = self.run_epoch(epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
