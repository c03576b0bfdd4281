"""Pretrain the shipped demo backbone ``demo-tiny`` on the synthetic shapes world.

A small open_clip ``CLIP`` (ViT image tower, causal text tower with EOT pooling,
the standard CLIP BPE tokenizer) learns contrastively from pictures and
captions drawn on the fly by :mod:`visprompt.data.synthetic` (pretraining
world: :data:`~visprompt.data.synthetic.PRETRAIN_WORLD`). Batch ``i`` is scenes
``i * batch .. (i + 1) * batch - 1`` of ``--seed``, so a run is a function of its
arguments (on the same CPU type and thread count).

Writes into ``--out`` (default ``src/visprompt/assets``):

* ``demo-tiny.safetensors``: the weights, with the token embedding table cut to
  the BPE ids the world's captions use (see :mod:`visprompt.backbone.demo`);
* ``demo-tiny.json``: the open_clip model config;
* ``MODEL_CARD.md``: architecture, data, steps, wall time and accuracies,
  measured on the saved file reloaded through ``visprompt.backbone.demo``.

The defaults are what produced the shipped files::

    python scripts/pretrain_demo_clip.py --out src/visprompt/assets

Zero-shot accuracy over the 14 shape names is printed every ``--eval-every``
steps on a fixed pretraining-world test set and on the ``synthetic-shapes``
test split (the downstream task, under a shift).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine that other
# processes share, spinning threads made a step up to 15x slower (measured:
# 13.9 s vs 0.7 s median per step, batch 256). Results are unaffected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from visprompt.backbone.demo import (
    CONFIG_FILE,
    NAME,
    WEIGHTS_FILE,
    build_demo_model,
    compress_token_table,
    load_demo_model,
)
from visprompt.backbone.frozen_clip import clip_tokenizer
from visprompt.backbone.text_encoder import encode_truncated
from visprompt.data.datasets import synthetic_shapes
from visprompt.data.fewshot import sample_few_shot
from visprompt.data.noise import inject_noise
from visprompt.data.synthetic import (
    DOWNSTREAM_WORLD,
    PRETRAIN_WORLD,
    SHAPES,
    TYPICAL_COLOURS,
    World,
    caption_vocabulary,
    generate,
    generate_class_balanced,
)
from visprompt.data.types import Sample

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)

#: Zero-shot prompts: CoOp's short template, and one whose class name sits
#: after 16 tokens, where prompt learning with 16 context vectors puts it.
SHORT_TEMPLATE = "a photo of a {}."
LONG_TEMPLATE = "here we see a simple synthetic image of a shape, and the shape is a {}."

PRETRAIN_TEST_SEED = 424242
PRETRAIN_TEST_PER_CLASS = 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("src/visprompt/assets"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4500, help="optimizer steps (the schedule)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop early after this many minutes (the result then differs from the defaults)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training")
    p.add_argument("--workers", type=int, default=1, help="data processes (0: in the main one)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--context-length", type=int, default=32)
    p.add_argument("--no-save", action="store_true", help="train and evaluate only")
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict:
    """The open_clip model config of the demo architecture (heads of width 64)."""
    return {
        "embed_dim": args.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": args.image_size,
            "layers": args.vision_layers,
            "width": args.vision_width,
            "head_width": 64,
            "patch_size": args.patch_size,
        },
        "text_cfg": {
            "context_length": args.context_length,
            "vocab_size": 49408,
            "width": args.text_width,
            "heads": max(args.text_width // 64, 1),
            "layers": args.text_layers,
        },
    }


def world_token_ids(tokenizer) -> torch.Tensor:
    """BPE ids whose embeddings the demo model keeps: every caption word, SOT, EOT, 'X'."""
    ids = {int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)}
    for word in (*caption_vocabulary(), "X"):
        ids.update(int(i) for i in tokenizer.encode(word))
    return torch.tensor(sorted(ids), dtype=torch.int64)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - MEAN) / STD


def encode_text_bucketed(model, tokens: torch.Tensor, embed=None, buckets: int = 4) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed in length buckets (exact, cheaper).

    The text tower is causal, so each bucket of captions can be cut after its
    longest end-of-text token without changing any feature. ``embed`` maps
    token ids to embeddings (default: the model's token embedding).
    """
    embed = model.token_embedding if embed is None else embed
    eot = tokens.argmax(dim=-1)
    order = torch.argsort(eot, stable=True)
    feats = []
    for idx in torch.chunk(order, buckets):
        emb = embed(tokens[idx])
        feats.append(encode_truncated(model, emb, eot[idx]))
    out = torch.empty(tokens.shape[0], feats[0].shape[1], dtype=feats[0].dtype)
    out[order] = torch.cat(feats)
    return out


@torch.no_grad()
def image_features(model, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    parts = [
        F.normalize(model.encode_image(to_tensor(images[i : i + batch])), dim=-1)
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


@torch.no_grad()
def zero_shot(model, tokenizer, feats: torch.Tensor, labels: np.ndarray, template: str) -> float:
    text = model.encode_text(tokenizer([template.format(s) for s in SHAPES]))
    pred = (feats @ F.normalize(text, dim=-1).T).argmax(dim=1).numpy()
    return float((pred == labels).mean())


def linear_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    clf = LogisticRegression(C=1.0, max_iter=2000)
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices into the train pool of the images a run with this seed trains on.

    The library's sampler on the dataset's own file names (it sorts each class by
    path), so the probe sees exactly the few-shot set of ``visprompt train`` on
    ``synthetic-shapes``, in the trainer's (label, path) order.
    """
    paths = synthetic_shapes.relative_paths("train", labels)
    pool = [
        Sample(path=p, label=int(y), classname=SHAPES[int(y)])
        for p, y in zip(paths, labels, strict=True)
    ]
    where = {p: i for i, p in enumerate(paths)}
    return np.array([where[s.path] for s in sample_few_shot(pool, shots, seed)])


class PairBatches(torch.utils.data.Dataset):
    """Batch ``i`` of the pretraining stream: scenes ``i * batch .. (i + 1) * batch - 1``."""

    def __init__(self, seed: int, batch_size: int, image_size: int, tokenizer) -> None:
        self.seed, self.batch_size, self.image_size = seed, batch_size, image_size
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return 2**31 // self.batch_size

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, captions, _ = generate(
            self.batch_size,
            self.seed,
            PRETRAIN_WORLD,
            self.image_size,
            start=step * self.batch_size,
        )
        return to_tensor(images), self.tokenizer(captions)


class EvalSets:
    """Fixed evaluation images: a pretraining-world test set and the downstream splits."""

    def __init__(self, image_size: int) -> None:
        self.pre_images, self.pre_labels, _ = generate_class_balanced(
            PRETRAIN_TEST_PER_CLASS, PRETRAIN_TEST_SEED, PRETRAIN_WORLD, image_size
        )
        if image_size != synthetic_shapes.IMAGE_SIZE:
            raise SystemExit(
                f"--image-size {image_size} differs from synthetic-shapes' "
                f"{synthetic_shapes.IMAGE_SIZE}"
            )
        self.down_images, self.down_labels = synthetic_shapes.generate_split("test")
        self.train_images, self.train_labels = synthetic_shapes.generate_split("train")

    def zero_shot(self, model, tokenizer) -> dict[str, float]:
        pre = image_features(model, self.pre_images)
        down = image_features(model, self.down_images)
        return {
            "pretrain_short": zero_shot(model, tokenizer, pre, self.pre_labels, SHORT_TEMPLATE),
            "pretrain_long": zero_shot(model, tokenizer, pre, self.pre_labels, LONG_TEMPLATE),
            "down_short": zero_shot(model, tokenizer, down, self.down_labels, SHORT_TEMPLATE),
            "down_long": zero_shot(model, tokenizer, down, self.down_labels, LONG_TEMPLATE),
        }

    def probes(self, model, shots: int = 16, seeds: tuple[int, ...] = (1, 2, 3)) -> dict:
        """Linear probes on frozen features, 16 shots/class, clean and 50% symmetric noise."""
        train = image_features(model, self.train_images).numpy()
        test = image_features(model, self.down_images).numpy()
        k = len(SHAPES)
        clean, noisy = [], []
        for seed in seeds:
            idx = few_shot_indices(self.train_labels, shots, seed)
            y = self.train_labels[idx]
            clean.append(linear_probe(train[idx], y, test, self.down_labels))
            y_noisy = inject_noise(y, k, "sym", 0.5, seed).noisy  # the trainer's sym noise
            noisy.append(linear_probe(train[idx], y_noisy, test, self.down_labels))
        return {"probe_clean": clean, "probe_sym50": noisy}


def param_groups(model, weight_decay: float) -> list[dict]:
    # open_clip's rule: no decay on gains, biases and the logit scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return 0.5 * args.lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(args: argparse.Namespace, config: dict, tokenizer, evals: EvalSets):
    torch.manual_seed(args.seed)
    model = build_demo_model(config)
    keep = world_token_ids(tokenizer)
    # Only the rows of the words the world uses are trained (a small table, so the
    # optimiser does not sweep 49408 rows each step); every other row is zero and,
    # never used by a caption, would never get a gradient anyway. So the saved file
    # can drop them and the loaded model is exactly the trained one.
    table = model.token_embedding.weight
    table.requires_grad_(False)
    rows = torch.nn.Embedding(len(keep), table.shape[1])
    with torch.no_grad():
        rows.weight.copy_(table[keep])
        table.zero_()
    remap = torch.zeros(table.shape[0], dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        return rows(remap[tokens])

    def sync_table() -> None:
        with torch.no_grad():
            table[keep] = rows.weight

    model.train()
    groups = param_groups(model, args.weight_decay)
    groups[0]["params"].append(rows.weight)  # decayed, as open_clip decays token embeddings
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98))
    history = []
    # One worker process draws the batches (a pure function of the step index) while
    # the main process trains, so generation is off the critical path.
    batches = torch.utils.data.DataLoader(
        PairBatches(args.seed, args.batch_size, args.image_size, tokenizer),
        batch_size=None,
        sampler=range(args.steps),
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
    )
    start = time.perf_counter()
    gen_time = 0.0
    done = 0
    stream = iter(batches)
    for step in range(args.steps):
        if args.minutes is not None and time.perf_counter() - start > 60 * args.minutes:
            print(f"stopping at step {step}: --minutes {args.minutes} reached", flush=True)
            break
        t0 = time.perf_counter()
        x, tokens = next(stream)
        gen_time += time.perf_counter() - t0
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(encode_text_bucketed(model, tokens, embed), dim=-1)
        scale = model.logit_scale.exp()
        logits = scale * img @ txt.T
        target = torch.arange(len(logits))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        if done % 20 == 0 or done == 1:
            el = time.perf_counter() - start
            print(
                f"step {done:5d} loss {loss.item():.3f} lr {lr_at(step, args):.2e} "
                f"scale {scale.item():.1f} {el / 60:.1f} min (waiting for data {gen_time:.0f} s)",
                flush=True,
            )
        if done % args.eval_every == 0 or done == args.steps:
            model.eval()
            sync_table()
            acc = evals.zero_shot(model, tokenizer)
            model.train()
            history.append({"step": done, "loss": float(loss.item()), **acc})
            print("  zero-shot " + json.dumps({k: round(v, 3) for k, v in acc.items()}), flush=True)
    wall = time.perf_counter() - start
    sync_table()
    table.requires_grad_(True)
    return model.eval(), history, wall, done, keep


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_world(world: World) -> str:
    """A Markdown list of what a world draws."""
    backgrounds = ", ".join(f"{b} {100 * p:.0f}%" for b, p in world.backgrounds)
    if world.typical_colour_prob > 0:
        habits = ", ".join(f"{s} {c}" for s, c in TYPICAL_COLOURS.items())
        colour = (
            f"with probability {world.typical_colour_prob:g} a shape has its habitual colour "
            f"({habits}), else one of the {len(world.colours)} colours uniformly"
        )
    else:
        colour = f"{len(world.colours)} colours ({', '.join(world.colours)}), independent of shape"
    if world.pixel_block > 1:
        camera = (
            f"coarse: pictures taken at 1/{world.pixel_block} of the resolution (bilinear "
            f"reduction) and shown in {world.pixel_block} x {world.pixel_block} pixel blocks"
        )
    else:
        camera = "full resolution, anti-aliased"
    return "\n".join(
        [
            f"- {len(world.shapes)} shapes: {', '.join(world.shapes)};",
            f"- colour: {colour}; the background has another colour;",
            f"- backgrounds: {backgrounds}; pattern contrast {world.pattern_contrast:g};",
            f"- sizes {', '.join(world.sizes)}, any position, rotation within "
            f"±{world.max_angle:g}°; clutter (scribbles) in {100 * world.clutter_prob:.0f}% and "
            f"an occluding bar in {100 * world.occlusion_prob:.0f}% of the pictures;",
            f"- camera: {camera}.",
        ]
    )


def write_card(
    path: Path,
    args: argparse.Namespace,
    config: dict,
    final: dict,
    probes: dict,
    history: list[dict],
    wall: float,
    steps_done: int,
    n_params: int,
    n_stored: int,
    kept_ids: int,
    file_bytes: int,
) -> None:
    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    def mean_std(vals: list[float]) -> str:
        return f"{100 * np.mean(vals):.1f}% ± {100 * np.std(vals):.1f}"

    vc, tc = config["vision_cfg"], config["text_cfg"]
    cmd = "python scripts/pretrain_demo_clip.py " + " ".join(sys.argv[1:])
    rows = "\n".join(
        f"| {h['step']} | {h['loss']:.3f} | {pct(h['pretrain_short'])} | {pct(h['pretrain_long'])} "
        f"| {pct(h['down_short'])} | {pct(h['down_long'])} |"
        for h in history
    )
    chance = 1.0 / len(SHAPES)
    text = f"""# Model card: `{NAME}`

A small CLIP, pretrained from scratch on a procedurally generated world of
shapes, shipped inside visprompt so that the offline demo runs the real
pipeline (zero-shot, prompt learning, OT purification) without downloads. It
is a real open_clip `CLIP` with the standard CLIP BPE tokenizer (vocabulary
49408), a causal text tower with end-of-text pooling, and a ViT image tower.
It knows nothing outside its world: it is a teaching and testing model, not a
general image model.

## Architecture

| part | value |
| --- | --- |
| image tower | ViT, {vc["layers"]} layers x {vc["width"]} wide (heads of 64), patch {vc["patch_size"]}, {vc["image_size"]} px input |
| text tower | causal transformer, {tc["layers"]} layers x {tc["width"]} wide, {tc["heads"]} heads, context {tc["context_length"]} tokens, EOT pooling |
| joint embedding | {config["embed_dim"]} |
| parameters | {n_params:,} (of which {n_stored:,} stored; see below) |
| weights file | `{WEIGHTS_FILE}`, {file_bytes / 1e6:.2f} MB, fp32 safetensors |
| config | `{CONFIG_FILE}` (open_clip model config) |

Token embeddings are stored only for the {kept_ids} BPE ids the world's
captions use (plus SOT, EOT and the `X` placeholder that prompt learners put in
context slots); the loader rebuilds the full 49408-row table with zeros in all
other rows. Those rows were zero throughout pretraining (no caption uses them,
so they never had a gradient), so the loaded model is exactly the trained one.
A prompt word outside the world's vocabulary embeds as a zero vector.

Image preprocessing: pixels / 255, normalised with OpenAI CLIP's mean and std;
the world's pictures are rendered at {vc["image_size"]} px directly.

## Data

Pictures and captions drawn on the fly by `visprompt.data.synthetic`
(`PRETRAIN_WORLD`), a new batch every step, never repeated:

{describe_world(PRETRAIN_WORLD)}
- captions from several templates that mention the shape always and the other
  attributes sometimes (e.g. "a photo of a large red star on a striped blue
  background.", "a small green figure on a dotted background with some
  clutter, and it is a pentagon."); a third name the shape last, after a long
  description, so the text tower reads class names at the positions prompt
  learning uses (after 16 context tokens).

The downstream task `synthetic-shapes` (`DOWNSTREAM_WORLD`) shifts this world:

{describe_world(DOWNSTREAM_WORLD)}

## Training

| setting | value |
| --- | --- |
| command | `{cmd}` |
| seed | {args.seed} |
| steps | {steps_done} of {args.steps}, batch {args.batch_size} ({steps_done * args.batch_size:,} pairs) |
| optimiser | AdamW (β = 0.9, 0.98), peak lr {args.lr:g}, {args.warmup} warm-up steps, cosine decay, weight decay {args.weight_decay:g}, gradient clipping 1.0 |
| loss | symmetric InfoNCE with a learnable temperature (max scale 100) |
| threads | {args.threads} (`torch.set_num_threads`) |
| wall time | {wall / 60:.1f} min on {platform.processor() or platform.machine()} ({args.threads} threads), {datetime.date.today().isoformat()} |
| final logit scale | {final["logit_scale"]:.1f} |

## Zero-shot accuracy

Measured by this script on the saved file, reloaded through
`visprompt.backbone.demo`. Chance is {pct(chance)} ({len(SHAPES)} classes).

| test set | "{SHORT_TEMPLATE}" | 16-token prompt* |
| --- | --- | --- |
| pretraining world, {PRETRAIN_TEST_PER_CLASS}/class (seed {PRETRAIN_TEST_SEED}) | {pct(final["pretrain_short"])} | {pct(final["pretrain_long"])} |
| `synthetic-shapes` test split, 50/class (downstream, shifted) | {pct(final["down_short"])} | {pct(final["down_long"])} |

\\* "{LONG_TEMPLATE}": the class name sits after 16 tokens,
where prompt learners with 16 context vectors put it; this checks that the
positions they use were trained.

During pretraining (same sets; loss of the batch at that step):

| step | loss | pretrain short | pretrain 16-token | downstream short | downstream 16-token |
| --- | --- | --- | --- | --- | --- |
{rows}

## Downstream few-shot (`synthetic-shapes`, 16 shots/class)

Measured by this script: logistic regression (scikit-learn, C = 1) on the
frozen, normalised image features of the 16 training images per class that
`visprompt train` draws from the train pool with the same seed
(`visprompt.data.fewshot`), tested on the 700 test images; mean ± std over
few-shot seeds 1, 2, 3; noise injected by `visprompt.data.noise` as the
trainer's `sym` (floor(0.5 N) labels moved to another random class).

| features + classifier | clean labels | 50% symmetric noise |
| --- | --- | --- |
| linear probe | {mean_std(probes["probe_clean"])} | {mean_std(probes["probe_sym50"])} |
| zero-shot (no training) | {pct(final["down_short"])} | {pct(final["down_short"])} |

<!-- prompt-learning numbers -->
"""
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = model_config(args)
    tokenizer = clip_tokenizer(args.context_length)
    evals = EvalSets(args.image_size)
    model, history, wall, steps_done, keep = train(args, config, tokenizer, evals)
    print(f"trained {steps_done} steps in {wall / 60:.1f} min", flush=True)
    if args.no_save:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    stored = compress_token_table(state, keep)
    meta = {
        "format": "visprompt-demo-clip",
        "name": NAME,
        "seed": str(args.seed),
        "steps": str(steps_done),
        "vocab_size": str(config["text_cfg"]["vocab_size"]),
    }
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(stored, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors writes owner-only files; the asset ships in a package
    tmp.replace(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    # Every number in the card comes from the file as a user loads it.
    loaded = load_demo_model(out)
    for k, v in loaded.state_dict().items():
        if not torch.equal(v, state[k]):
            raise SystemExit(f"reloaded weights differ from the trained ones at {k}")
    final = evals.zero_shot(loaded, tokenizer)
    final["logit_scale"] = float(loaded.logit_scale.detach().exp())
    probes = evals.probes(loaded)
    print("final " + json.dumps(final), flush=True)
    print("probes " + json.dumps(probes), flush=True)
    write_card(
        out / "MODEL_CARD.md",
        args,
        config,
        final,
        probes,
        history,
        wall,
        steps_done,
        count_params(loaded),
        sum(v.numel() for v in stored.values()),
        int(stored["token_embedding.ids"].numel()),
        (out / WEIGHTS_FILE).stat().st_size,
    )
    print(f"wrote {out / WEIGHTS_FILE}, {out / CONFIG_FILE}, {out / 'MODEL_CARD.md'}", flush=True)


if __name__ == "__main__":
    main()
