"""Class-name prompts with learnable context slots.

A prompt for class k is the token sequence (CoOp's layout, class token at the end)::

    [SOS] ctx_1 .. ctx_M <class name tokens> . [EOS]

and ``layout="front"`` / ``"middle"`` place the name before / inside the context
as CoOp's ``CLASS_TOKEN_POSITION`` does. ``build_class_prompts`` returns the
token ids with placeholder tokens at the context slots and, for every class,
where its M context slots and its EOT token are; ``insert_context`` writes
context vectors into those slots of the frozen token embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from visprompt.errors import VispromptError

LAYOUTS = ("end", "middle", "front")


@dataclass(frozen=True)
class ClassPrompts:
    """Token layout of K class prompts.

    Attributes:
        token_ids: (K, L) token ids, L = the model's context length; context slots
            hold a placeholder (or the ``ctx_init`` words when given).
        eot_index: (K,) position of the EOT token of each prompt.
        ctx_positions: (K, M) sorted positions of the M context slots of each prompt.
        classnames: the K class names as written into the prompts.
        layout: ``end``, ``middle`` or ``front``.
        ctx_init_ids: BPE ids of the initialisation phrase, or ``None``.
    """

    token_ids: torch.Tensor
    eot_index: torch.Tensor
    ctx_positions: torch.Tensor
    classnames: tuple[str, ...]
    layout: str
    ctx_init_ids: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.ctx_positions.shape[1])

    @property
    def ctx_mask(self) -> torch.Tensor:
        """(K, L) bool mask of the context slots."""
        mask = torch.zeros_like(self.token_ids, dtype=torch.bool)
        mask.scatter_(1, self.ctx_positions, True)
        return mask

    @property
    def shared_prefix_length(self) -> int | None:
        """Length of the class-independent prefix ``[SOS] ctx_1..ctx_M``, or None.

        Only the ``end`` layout has every prompt start with the same tokens.
        """
        if self.layout != "end":
            return None
        return 1 + self.n_ctx

    def to(self, device: torch.device | str) -> ClassPrompts:
        return ClassPrompts(
            token_ids=self.token_ids.to(device),
            eot_index=self.eot_index.to(device),
            ctx_positions=self.ctx_positions.to(device),
            classnames=self.classnames,
            layout=self.layout,
            ctx_init_ids=self.ctx_init_ids,
        )


def clean_classname(name: str) -> str:
    """Class names as CoOp writes them into prompts (underscores become spaces)."""
    return " ".join(name.replace("_", " ").split())


def build_class_prompts(
    tokenizer,
    classnames: Sequence[str],
    n_ctx: int = 16,
    layout: str = "end",
    ctx_init: str | None = None,
) -> ClassPrompts:
    """Token layout of ``[SOS] ctx_1..ctx_M <name> . [EOS]`` for every class.

    Args:
        tokenizer: an open_clip ``SimpleTokenizer`` (``encode``, ``sot_token_id``,
            ``eot_token_id``, ``context_length``).
        classnames: K class names (underscores become spaces). ``<name> .`` is
            tokenized as one string, as CoOp tokenizes its whole prompt, so the
            token ids equal CoOp's also where the name ends in punctuation.
        n_ctx: M, the number of context slots (ignored when ``ctx_init`` is given:
            M is then the number of tokens of the phrase).
        layout: where the class name goes: ``end`` (default), ``middle``, ``front``.
        ctx_init: optional phrase (e.g. ``"a photo of a"``) whose tokens fill the
            context slots, so its embeddings can initialise the context.
    """
    if layout not in LAYOUTS:
        raise VispromptError(f"unknown class token position {layout!r}; choose one of {LAYOUTS}")
    if not classnames:
        raise VispromptError("no class names given; a dataset needs at least one class")
    init_ids: tuple[int, ...] | None = None
    if ctx_init:
        init_ids = tuple(tokenizer.encode(ctx_init.replace("_", " ")))
        if not init_ids:
            raise VispromptError(f"ctx_init {ctx_init!r} has no tokens; give a phrase or null")
        n_ctx = len(init_ids)
    if n_ctx < 1:
        raise VispromptError(f"n_ctx must be at least 1, got {n_ctx}")
    placeholder = tokenizer.encode("X")[0]
    ctx_tokens = list(init_ids) if init_ids else [placeholder] * n_ctx
    length = int(tokenizer.context_length)
    sot, eot = int(tokenizer.sot_token_id), int(tokenizer.eot_token_id)

    names = tuple(clean_classname(n) for n in classnames)
    ids = torch.zeros(len(names), length, dtype=torch.long)
    eot_index = torch.zeros(len(names), dtype=torch.long)
    positions = torch.zeros(len(names), n_ctx, dtype=torch.long)
    for k, name in enumerate(names):
        # CoOp tokenizes the whole prompt string "X .. X <name>." at once, so the name
        # and the period are one BPE stretch: a name ending in punctuation merges with
        # it ('pink-yellow dahlia?' + '.' gives the one token '?.'). For the front and
        # middle positions CoOp takes the first len(encode(name)) tokens of that stretch
        # as the class tokens.
        suffix = list(tokenizer.encode(name + "."))
        name_len = len(tokenizer.encode(name))
        name_ids, rest = suffix[:name_len], suffix[name_len:]
        if layout == "end":
            body = ctx_tokens + suffix
            ctx_start = [1]
        elif layout == "front":
            body = name_ids + ctx_tokens + rest
            ctx_start = [1 + len(name_ids)]
        else:  # middle: half the context, the name, the other half
            half = n_ctx // 2
            body = ctx_tokens[:half] + name_ids + ctx_tokens[half:] + rest
            ctx_start = [1, 1 + half + len(name_ids)]
        seq = [sot, *body, eot]
        if len(seq) > length:
            raise VispromptError(
                f"class name {name!r} makes a prompt of {len(seq)} tokens, more than the "
                f"model's {length}; shorten the class name or use fewer context tokens"
            )
        ids[k, : len(seq)] = torch.tensor(seq)
        eot_index[k] = len(seq) - 1
        if layout == "middle":
            half = n_ctx // 2
            pos = list(range(1, 1 + half)) + list(range(ctx_start[1], ctx_start[1] + n_ctx - half))
        else:
            pos = list(range(ctx_start[0], ctx_start[0] + n_ctx))
        positions[k] = torch.tensor(pos)
    return ClassPrompts(
        token_ids=ids,
        eot_index=eot_index,
        ctx_positions=positions,
        classnames=names,
        layout=layout,
        ctx_init_ids=init_ids,
    )


def insert_context(
    base_embeddings: torch.Tensor,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    per_image: bool = False,
) -> torch.Tensor:
    """Write context vectors into the context slots of frozen prompt embeddings.

    Args:
        base_embeddings: (K, L, d) token embeddings of ``prompts.token_ids``.
        prompts: the layout (where each class's M slots are).
        ctx: the context. With ``per_image=False``: (M, d) shared by all classes
            or (K, M, d) class-specific, giving (K, L, d). With ``per_image=True``:
            (B, M, d) shared over classes or (B, K, M, d), giving (B, K, L, d).

    Gradients flow into ``ctx``; ``base_embeddings`` stays untouched.
    """
    num_classes, length, width = base_embeddings.shape
    m = prompts.n_ctx
    lead = 1 if per_image else 0
    if ctx.dim() == lead + 2:
        ctx = ctx.unsqueeze(lead)
    if ctx.dim() != lead + 3 or ctx.shape[-2:] != (m, width):
        raise ValueError(
            f"context of shape {tuple(ctx.shape)} does not fit {m} slots of width {width}"
            f" ({'per-image' if per_image else 'shared'} prompts)"
        )
    ctx = ctx.expand(*ctx.shape[:lead], num_classes, m, width).to(base_embeddings.dtype)
    mask = prompts.ctx_mask.to(base_embeddings.device).unsqueeze(-1)
    if not per_image:
        return base_embeddings.masked_scatter(mask, ctx)
    batch = ctx.shape[0]
    base = base_embeddings.unsqueeze(0).expand(batch, num_classes, length, width)
    return base.masked_scatter(mask.unsqueeze(0).expand_as(base), ctx)
