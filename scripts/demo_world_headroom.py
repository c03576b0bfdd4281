"""How much room the demo task leaves to few-shot learners over zero-shot.

For the ``synthetic-shapes`` world (:data:`visprompt.data.synthetic.DOWNSTREAM_WORLD`)
and the same world with a full-resolution camera, prints the shipped demo
backbone's zero-shot accuracy and a linear probe's accuracy on its frozen image
features trained with many labelled pictures per class (an upper reference for
what a classifier on those features can reach). When the two are close, the
text tower's class embeddings already use what the features can tell apart,
and no prompt learner can clearly beat zero-shot: check this before changing
the world.

    python scripts/demo_world_headroom.py [--per-class 400]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from pretrain_demo_clip import SHORT_TEMPLATE, image_features, linear_probe, zero_shot

from visprompt.backbone.demo import load_demo_model
from visprompt.backbone.frozen_clip import clip_tokenizer
from visprompt.data.datasets import synthetic_shapes
from visprompt.data.synthetic import DOWNSTREAM_WORLD, generate_class_balanced


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=400, help="probe training pictures per class")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_demo_model()
    tokenizer = clip_tokenizer(model.context_length)
    train_seed = synthetic_shapes.SPLITS["train"][1]
    test_per_class, test_seed = synthetic_shapes.SPLITS["test"]
    worlds = {
        "synthetic-shapes (coarse camera)": DOWNSTREAM_WORLD,
        "same world, full-resolution camera": replace(DOWNSTREAM_WORLD, pixel_block=1),
    }
    for name, world in worlds.items():
        train_x, train_y, _ = generate_class_balanced(args.per_class, train_seed, world)
        test_x, test_y, _ = generate_class_balanced(test_per_class, test_seed, world)
        train_f, test_f = image_features(model, train_x), image_features(model, test_x)
        zs = zero_shot(model, tokenizer, test_f, test_y, SHORT_TEMPLATE)
        probe = linear_probe(train_f.numpy(), train_y, test_f.numpy(), test_y)
        print(
            f"{name}: zero-shot {100 * zs:.1f}%, linear probe on {args.per_class} "
            f"pictures/class {100 * probe:.1f}%, headroom {100 * (probe - zs):+.1f} points",
            flush=True,
        )


if __name__ == "__main__":
    main()
