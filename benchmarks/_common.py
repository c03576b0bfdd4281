"""Shared pieces of the speed and memory benchmarks (not a test module).

* real-shaped backbones with random weights (``open_clip.create_model(arch,
  pretrained=None)``: nothing is downloaded), wrapped as the engine wraps them;
* Food-101's 101 class names (the suffix lengths of real prompts matter for
  shared-prefix encoding), extended for K > 101;
* the methods compared: CoOp and VisPrompt (per-image prompts: B x K text sequences);
* one training step done the reference implementations' way (77-token prompts,
  image tower on freshly augmented images, all prompts of a call in one batch)
  and one done our way (cached features, the engine's text encoding, chunks);
* environment notes (threads, load), a plain-text table and the RESULT line.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import open_clip
import torch
from torch import nn

from visprompt.backbone import BackboneIdentity, FrozenCLIP, insert_context
from visprompt.backbone.loader import wrap_frozen
from visprompt.config import EngineConfig, OptimConfig
from visprompt.engine.evaluate import autocast_context
from visprompt.engine.optim import build_optimizer
from visprompt.methods import METHOD_REGISTRY, FeatureBatch, PromptMethod, TrainBatch
from visprompt.methods.coop import CoOp, CoOpConfig

#: The 101 class folders of Food-101 (and Food-101N), in the dataset's order.
FOOD101 = [
    "apple_pie",
    "baby_back_ribs",
    "baklava",
    "beef_carpaccio",
    "beef_tartare",
    "beet_salad",
    "beignets",
    "bibimbap",
    "bread_pudding",
    "breakfast_burrito",
    "bruschetta",
    "caesar_salad",
    "cannoli",
    "caprese_salad",
    "carrot_cake",
    "ceviche",
    "cheesecake",
    "cheese_plate",
    "chicken_curry",
    "chicken_quesadilla",
    "chicken_wings",
    "chocolate_cake",
    "chocolate_mousse",
    "churros",
    "clam_chowder",
    "club_sandwich",
    "crab_cakes",
    "creme_brulee",
    "croque_madame",
    "cup_cakes",
    "deviled_eggs",
    "donuts",
    "dumplings",
    "edamame",
    "eggs_benedict",
    "escargots",
    "falafel",
    "filet_mignon",
    "fish_and_chips",
    "foie_gras",
    "french_fries",
    "french_onion_soup",
    "french_toast",
    "fried_calamari",
    "fried_rice",
    "frozen_yogurt",
    "garlic_bread",
    "gnocchi",
    "greek_salad",
    "grilled_cheese_sandwich",
    "grilled_salmon",
    "guacamole",
    "gyoza",
    "hamburger",
    "hot_and_sour_soup",
    "hot_dog",
    "huevos_rancheros",
    "hummus",
    "ice_cream",
    "lasagna",
    "lobster_bisque",
    "lobster_roll_sandwich",
    "macaroni_and_cheese",
    "macarons",
    "miso_soup",
    "mussels",
    "nachos",
    "omelette",
    "onion_rings",
    "oysters",
    "pad_thai",
    "paella",
    "pancakes",
    "panna_cotta",
    "peking_duck",
    "pho",
    "pizza",
    "pork_chop",
    "poutine",
    "prime_rib",
    "pulled_pork_sandwich",
    "ramen",
    "ravioli",
    "red_velvet_cake",
    "risotto",
    "samosa",
    "sashimi",
    "scallops",
    "seaweed_salad",
    "shrimp_and_grits",
    "spaghetti_bolognese",
    "spaghetti_carbonara",
    "spring_rolls",
    "steak",
    "strawberry_shortcake",
    "sushi",
    "tacos",
    "takoyaki",
    "tiramisu",
    "tuna_tartare",
    "waffles",
]


def class_names(k: int) -> list[str]:
    """K class names: Food-101's, repeated in order when K > 101.

    Repeating (rather than inventing new names) keeps the distribution of prompt
    lengths the same for every K, so a change with K is a change with K alone.
    """
    return [FOOD101[i % len(FOOD101)] for i in range(k)]


def pick_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but no CUDA GPU is visible")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_backbone(arch: str, device: torch.device, seed: int = 0) -> FrozenCLIP:
    """A real-shaped open_clip architecture with random weights, frozen as the engine does."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    identity = BackboneIdentity(name=arch, arch=arch, fingerprint=f"random:{arch}:seed{seed}")
    return wrap_frozen(model.float(), identity, device, "fp32")


def ensure_omp_wait_policy() -> None:
    """Re-run this script with ``OMP_WAIT_POLICY=PASSIVE`` unless a policy was chosen.

    OpenMP worker threads normally spin while they wait for work. When the cores
    are shared with other busy processes (as on this 2-core machine), a spinning
    thread burns the time slice the thread it waits for needs, and every one of a
    step's thousands of parallel regions pays for it (measured: the same text
    pass took 4x the CPU time with 2 spinning threads). Passive threads sleep
    instead. The policy is read when the OpenMP runtime loads, hence the re-run;
    it applies to the reference and to our paths alike (same process). Set
    ``OMP_WAIT_POLICY=ACTIVE`` to measure with spinning threads.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def environment(device: torch.device) -> str:
    """One line: where and under what load the numbers were measured."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return (
        f"torch {torch.__version__}, device {device} ({where or platform.machine()}), "
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), {os.cpu_count()} CPUs, "
        f"load average {load}"
    )


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    """A plain-text table of ``rows`` (dicts) with the given columns."""

    def fmt(value) -> str:
        if isinstance(value, float):
            if value == 0 or 1e-3 <= abs(value) < 1e5:
                return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
            return f"{value:.2e}"
        return str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def result_line(**values: float | str) -> str:
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return "RESULT " + " ".join(parts)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when both are zero)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    scale = a.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------- methods


def make_method(
    name: str, backbone: FrozenCLIP, classnames: Sequence[str], chunk_size: int | None
) -> tuple[PromptMethod, str]:
    """The method to time and a label saying which implementation it is.

    ``chunk_size`` is the backbone's setting (``engine.chunk_size``): it is set on
    ``backbone`` here, for every method built on it.
    """
    backbone.with_engine(text_encoding=backbone.text_encoding, chunk_size=chunk_size)
    torch.manual_seed(0)
    if name == "coop":
        method: PromptMethod = CoOp(backbone, classnames, CoOpConfig())
        label = "coop"
    elif name == "visprompt":
        entry = METHOD_REGISTRY.get("visprompt")
        # Dropout off so the two paths see the same numbers; it acts on B x M x d values.
        config = entry.config_cls(name="visprompt", dropout=0.0)
        method = entry.cls(backbone, classnames, config)
        label = "visprompt"
    else:
        raise SystemExit(f"unknown method {name!r}")
    return method.to(backbone.device), label


def default_chunk_size() -> int:
    return EngineConfig().chunk_size


# ------------------------------------------------------------------ reference-style text


@contextlib.contextmanager
def reference_text_encoding(backbone: FrozenCLIP) -> Iterator[dict]:
    """Make ``backbone.encode_class_prompts`` encode prompts the reference implementations' way.

    Every prompt is the full context length (77 tokens) and all the prompts of a
    call go through open_clip's text transformer in one batch, as CoOp's and
    CoCoOp's ``TextEncoder`` do (no truncation, no chunks, no shared prefix).
    A no-gradient call whose context has not changed (the shared prompts that
    VisPrompt's gate reads once per step) is computed once and reused within the
    step, as the reference would. Yields the memo, which the caller clears each step.
    """
    model = backbone.model
    memo: dict = {}

    def encode(prompts, base_embeddings, ctx, per_image=False, chunk_size=None):
        key = None
        if not torch.is_grad_enabled():
            key = (ctx.data_ptr(), ctx._version, tuple(ctx.shape), per_image, id(prompts))
            if key in memo:
                return memo[key]
        emb = insert_context(base_embeddings, prompts, ctx, per_image=per_image)
        flat = emb.flatten(0, 1) if per_image else emb
        eot = prompts.eot_index.to(flat.device)
        if per_image:
            eot = eot.repeat(emb.shape[0])
        dtype = model.transformer.get_cast_dtype()
        x = flat.to(dtype) + model.positional_embedding.to(dtype)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = model.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        out = x.view(*emb.shape[:2], -1) if per_image else x
        if key is not None:
            memo[key] = out
        return out

    backbone.encode_class_prompts = encode  # instance attribute shadows the method
    try:
        yield memo
    finally:
        del backbone.encode_class_prompts


# --------------------------------------------------------------------------------- steps


def augment_batch(images: torch.Tensor, size: int, seed: int, backbone: FrozenCLIP) -> torch.Tensor:
    """Freshly augmented views (random resized crop + flip, normalised) of raw images."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(
                size, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC, antialias=True
            ),
            T.RandomHorizontalFlip(),
            T.Normalize(backbone.image_mean, backbone.image_std),
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([tf(img) for img in images])


@dataclass
class StepInputs:
    """One batch: raw images (reference path), their cached view features (our path), labels."""

    images: torch.Tensor
    labels: torch.Tensor
    cached: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return int(self.labels.numel())


def make_inputs(
    backbone: FrozenCLIP, batch: int, num_classes: int, views: int, seed: int = 0
) -> StepInputs:
    """Random raw images and labels, and the image features of ``views`` augmented views.

    View r of the cache is exactly what the reference step computes at repetition
    r, so the two paths see the same features.
    """
    g = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    images = torch.rand(batch, 3, size + size // 7, size + size // 7, generator=g)
    labels = torch.randint(num_classes, (batch,), generator=g)
    cached = []
    for view in range(views):
        aug = augment_batch(images, size, seed=view, backbone=backbone)
        cached.append(backbone.encode_image(aug.to(backbone.device)))
    return StepInputs(images=images, labels=labels.to(backbone.device), cached=cached)


@dataclass
class StepResult:
    #: wall-clock seconds of the whole step
    seconds: float
    #: CPU seconds of this process during the step (all threads; less sensitive to load)
    cpu_seconds: float
    image_seconds: float
    logits: torch.Tensor
    grads: torch.Tensor | None


def _batch(features: torch.Tensor, labels: torch.Tensor) -> TrainBatch:
    n = labels.numel()
    return TrainBatch(
        features=FeatureBatch(image=features),
        labels=labels,
        index=torch.arange(n, device=labels.device),
        group=torch.zeros(n, dtype=torch.long, device=labels.device),
    )


def _flat_grads(method: nn.Module) -> torch.Tensor:
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().cpu()
            for p in method.parameters()
            if p.requires_grad
        ]
    )


def run_step(
    method: PromptMethod,
    optimizer: torch.optim.Optimizer,
    inputs: StepInputs,
    view: int,
    live_images: bool,
    micro_batch: int,
    precision: str = "fp32",
    keep_grads: bool = False,
    memo: dict | None = None,
) -> StepResult:
    """One training step (forward, backward, optimiser step), timed end to end.

    ``live_images=True``: the image tower runs on freshly augmented images (view
    ``view`` of the raw batch), as the reference implementations do; otherwise
    the cached features of view ``view`` are used. The loss is computed over
    micro-batches of ``micro_batch`` images whose gradients are accumulated (the
    same arithmetic as one batch for the batch-mean losses used here).
    """
    backbone = method.backbone
    device = backbone.device
    method.train()
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    image_seconds = 0.0
    if memo is not None:
        memo.clear()
    if live_images:
        aug = augment_batch(inputs.images, backbone.image_size, seed=view, backbone=backbone)
        with autocast_context(device, precision):
            feats = backbone.encode_image(aug.to(device))
        synchronize(device)
        image_seconds = time.perf_counter() - start
    else:
        feats = inputs.cached[view]
    optimizer.zero_grad(set_to_none=True)
    n = inputs.batch_size
    step = min(n, micro_batch)
    logits = []
    for first in range(0, n, step):
        part = slice(first, first + step)
        with autocast_context(device, precision):
            out = method.training_loss(_batch(feats[part], inputs.labels[part]))
        (out.loss * (out.logits.shape[0] / n)).backward()
        logits.append(out.logits.detach())
    grads = _flat_grads(method) if keep_grads else None
    optimizer.step()
    synchronize(device)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return StepResult(seconds, cpu, image_seconds, torch.cat(logits).float().cpu(), grads)


def new_optimizer(method: nn.Module) -> torch.optim.Optimizer:
    optimizer, _ = build_optimizer(method.parameters(), OptimConfig())
    return optimizer


def time_path(
    method: PromptMethod,
    initial_state: dict,
    inputs: StepInputs,
    reps: int,
    live_images: bool,
    micro_batch: int,
    precision: str,
    warmup: bool,
    setup: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[list[StepResult], StepResult]:
    """``reps`` timed steps from ``initial_state``; returns them and the first (for checks)."""
    method.load_state_dict(initial_state)
    optimizer = new_optimizer(method)
    results = []
    with setup() if setup is not None else contextlib.nullcontext() as memo:
        if warmup:
            run_step(method, optimizer, inputs, 0, live_images, micro_batch, precision, memo=memo)
            method.load_state_dict(initial_state)
            optimizer = new_optimizer(method)
        for rep in range(reps):
            results.append(
                run_step(
                    method,
                    optimizer,
                    inputs,
                    rep,
                    live_images,
                    micro_batch,
                    precision,
                    keep_grads=rep == 0,
                    memo=memo if isinstance(memo, dict) else None,
                )
            )
    method.load_state_dict(initial_state)
    return results, results[0]
