"""Can a backbone tell the class names apart? Checked once, before any training.

Two ways a prompt learner is silently handed classes it cannot separate:

* **Words the backbone never learned.** A token whose embedding row is all
  zeros never received a gradient in pretraining (the shipped ``demo-tiny``
  stores rows only for its synthetic world's words; every other row is zero).
  A class name made of such tokens embeds as nothing, so its prompt is the
  context alone and classes collapse onto each other: training "works", and
  ``predict`` gives near-uniform probabilities. This is refused.
* **Names that tokenize identically.** CLIP's tokenizer lowercases and cleans
  text, so "Cafe" and "cafe", or "dog_" and "dog", give the same prompt: those
  classes are indistinguishable by construction. This is warned about (the
  data may still be meant that way, e.g. after a relabelling).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from visprompt.backbone.frozen_clip import FrozenCLIP
from visprompt.backbone.prompts import clean_classname
from visprompt.errors import VispromptError


def unknown_words(backbone: FrozenCLIP, classnames: Sequence[str]) -> dict[str, list[str]]:
    """Class name -> its words whose token embeddings are all zero (never learned).

    Only names with at least one such token are returned, in input order.
    """
    table = backbone.model.token_embedding.weight
    never_learned = (table == 0).all(dim=1)
    if not bool(never_learned.any()):
        return {}
    out: dict[str, list[str]] = {}
    for name in classnames:
        ids = backbone.bpe(clean_classname(name))
        bad = [i for i in ids if bool(never_learned[i])]
        if bad:
            out[name] = [backbone.tokenizer.decode([i]).strip() for i in bad]
    return out


def identical_names(backbone: FrozenCLIP, classnames: Sequence[str]) -> list[list[str]]:
    """Groups (of two or more) of class names whose prompts' token ids are identical."""
    groups: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name in classnames:
        groups[tuple(backbone.bpe(clean_classname(name)))].append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_class_names(
    backbone: FrozenCLIP, classnames: Sequence[str], warn: Callable[[str], None]
) -> None:
    """Refuse class names the backbone cannot read; ``warn`` about identical prompts.

    Raises:
        VispromptError: some class name contains words whose embeddings are zero.
    """
    unknown = unknown_words(backbone, classnames)
    if unknown:
        shown = ", ".join(f"{n!r} ({' '.join(w)})" for n, w in list(unknown.items())[:4])
        more = f" and {len(unknown) - 4} more" if len(unknown) > 4 else ""
        name = backbone.identity.name
        if name == "demo-tiny":
            why = (
                "demo-tiny is a toy model that knows only the words of its synthetic shape "
                "world, so these classes would be indistinguishable"
            )
            fix = "use a real CLIP checkpoint (e.g. backbone.checkpoint=/ckpt/ViT-B-16.pt)"
        else:
            why = f"backbone {name} never learned these tokens (their embeddings are zero)"
            fix = "use a backbone trained on such words, or rename the classes"
        raise VispromptError(
            f"{len(unknown)} of {len(classnames)} class names contain unknown words: "
            f"{shown}{more}; {why}; {fix}"
        )
    for names in identical_names(backbone, classnames):
        warn(
            "warning: classes "
            + ", ".join(repr(n) for n in names)
            + " have identical prompts once tokenized (the tokenizer lowercases and cleans "
            "text), so no model can tell them apart; rename or merge them"
        )
