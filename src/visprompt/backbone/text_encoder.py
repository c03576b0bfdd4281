"""Exact, cheap forward passes of CLIP's causal text transformer.

Three facts make prompt encoding cheaper than open_clip's ``encode_text`` without
changing its result:

* the transformer is causal, so positions after the end-of-text (EOT) token
  never influence the EOT feature: a batch is cut to ``max(eot) + 1`` tokens
  (:func:`encode_truncated`);
* with the class name at the end, all K prompts share the prefix
  ``[SOS] ctx_1..ctx_M``, whose hidden states never depend on the class: the
  prefix runs once (per image, for per-image contexts) and only the short
  suffixes ``<name> . [EOS]`` run through the layers, attending to the prefix's
  keys and values (:func:`encode_shared_prefix`; about 4-5x less work than
  truncation for 16 context tokens);
* chunks of sequences can be encoded one after another under activation
  checkpointing, so peak memory stays bounded for B x K per-image prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _cast_dtype(model: nn.Module) -> torch.dtype:
    return model.transformer.get_cast_dtype()


def _encode_block(
    model: nn.Module, embeddings: torch.Tensor, eot_index: torch.Tensor
) -> torch.Tensor:
    length = int(eot_index.max().item()) + 1
    dtype = _cast_dtype(model)
    x = embeddings[:, :length].to(dtype) + model.positional_embedding[:length].to(dtype)
    mask = model.attn_mask
    if mask is not None:
        mask = mask[:length, :length]
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_index]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def encode_truncated(
    model: nn.Module,
    embeddings: torch.Tensor,
    eot_index: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """EOT features of ``embeddings`` (S, L, d), each sequence cut after its batch's last EOT.

    With ``chunk_size`` the S sequences are encoded ``chunk_size`` at a time;
    when gradients are needed each chunk is checkpointed (recomputed during the
    backward pass) so the activations of only one chunk are alive at once.
    Sequences are sorted by EOT position first, so each chunk is cut to the
    length its own prompts need.
    """
    if embeddings.dim() != 3:
        raise ValueError(f"expected (S, L, d) prompt embeddings, got {tuple(embeddings.shape)}")
    total = embeddings.shape[0]
    if chunk_size is None or chunk_size >= total:
        return _encode_block(model, embeddings, eot_index)
    order = torch.argsort(eot_index, stable=True)
    needs_grad = torch.is_grad_enabled() and embeddings.requires_grad
    pieces = []
    for start in range(0, total, chunk_size):
        idx = order[start : start + chunk_size]
        emb, eot = embeddings[idx], eot_index[idx]
        if needs_grad:
            pieces.append(checkpoint(_encode_block, model, emb, eot, use_reentrant=False))
        else:
            pieces.append(_encode_block(model, emb, eot))
    out = torch.cat(pieces, dim=0)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(total, device=order.device)
    return out[inverse]


# --------------------------------------------------------------------------- shared prefix
#
# With the class name at the end, every prompt is ``[SOS] ctx_1..ctx_M`` (the prefix, the
# same for all K classes) followed by ``<name> . [EOS]`` (a suffix of a few tokens). The
# transformer is causal, so the prefix's hidden states at every layer do not depend on the
# class: they are computed once per distinct prefix (once for a shared context, once per
# image for per-image contexts), and only the K suffixes run through the layers, attending
# to [prefix keys/values ; own suffix keys/values]. This is exact; autograd carries the
# gradient of every suffix back into the shared prefix.
#
# Suffixes have different lengths. The token-wise parts of a layer (LayerNorm, projections,
# MLP: nearly all the work) run on the *packed* suffix tokens with no padding; only the
# attention core, which is cheap, uses a padded (class, position) layout.


def shared_prefix_supported(model: nn.Module) -> bool:
    """Whether ``model``'s text tower has the layout the shared-prefix encoder relies on.

    That is: open_clip's standard ``ResidualAttentionBlock`` (pre-norm, one
    ``nn.MultiheadAttention`` with a packed in-projection, no extra key/value
    biases) in every layer and a causal attention mask. Towers built from other
    blocks (``CustomResidualAttentionBlock``, cross-attention blocks) are
    encoded by :func:`encode_truncated` instead.
    """
    from open_clip.transformer import ResidualAttentionBlock

    transformer = getattr(model, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    mask = getattr(model, "attn_mask", None)
    if blocks is None or len(blocks) == 0 or mask is None:
        return False
    for block in blocks:
        attn = getattr(block, "attn", None)
        if (
            type(block) is not ResidualAttentionBlock
            or hasattr(block, "ln_1_kv")
            or not isinstance(attn, nn.MultiheadAttention)
            or not attn._qkv_same_embed_dim
            or attn.bias_k is not None
            or attn.add_zero_attn
        ):
            return False
    n = min(int(mask.shape[-1]), 8)
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).triu(1)
    return bool(torch.equal(torch.isneginf(mask[:n, :n]), causal))


def _in_projection(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm + packed q/k/v projection of a block: (..., T, w) -> (..., T, 3w)."""
    return F.linear(block.ln_1(x), block.attn.in_proj_weight, block.attn.in_proj_bias)


def _finish_block(block: nn.Module, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm block after the attention core: out-projection, residual, MLP."""
    x = x + block.ls_1(block.attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _prefix_pass(
    model: nn.Module, prefix: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values (P, H, Lp, hd) of the P distinct prefixes (P, Lp, d)."""
    dtype = _cast_dtype(model)
    count, length, width = prefix.shape
    x = prefix.to(dtype) + model.positional_embedding[:length].to(dtype)
    blocks = model.transformer.resblocks
    keys, values = [], []
    for i, block in enumerate(blocks):
        heads = block.attn.num_heads
        qkv = _in_projection(block, x).view(count, length, 3, heads, width // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        keys.append(k.contiguous())
        values.append(v.contiguous())
        if i + 1 < len(blocks):  # the prefix's own output after the last layer is never used
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = _finish_block(block, x, attended.transpose(1, 2).reshape(count, length, width))
    return keys, values


def _joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    prefix_k: torch.Tensor,
    prefix_v: torch.Tensor,
    keep: torch.Tensor,
) -> torch.Tensor:
    """Suffix queries attending to [prefix keys ; own suffix keys], one softmax.

    Args:
        q: (Pq, H, C, Lq, hd) queries of C classes (Pq is 1 or P).
        k, v: (Pq, H, C, Ls, hd) keys/values of the same classes' suffix tokens.
        prefix_k, prefix_v: (P, H, Lp, hd) keys/values of the prefix, seen by every class
            (multiplied against directly, never copied per class).
        keep: boolean mask broadcastable to (C, Lq, Ls): which suffix keys a query sees.

    Returns:
        (P, H, C, Lq, hd) attended values.
    """
    pq, heads, classes, lq, hd = q.shape
    count, _, lp, _ = prefix_k.shape
    to_prefix = torch.matmul(q.reshape(pq, heads, classes * lq, hd), prefix_k.transpose(-1, -2))
    to_prefix = to_prefix.view(count, heads, classes, lq, lp)
    to_own = torch.matmul(q, k.transpose(-1, -2)).masked_fill(~keep, float("-inf"))
    logits = torch.cat([to_prefix, to_own.expand(count, -1, -1, -1, -1)], dim=-1)
    # The 1/sqrt(hd) scale goes on the logits (fewer numbers than the queries); the
    # softmax accumulates in float32 even when the tower runs in half precision.
    probs = (logits * hd**-0.5).softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    p_prefix, p_own = probs.split([lp, probs.shape[-1] - lp], dim=-1)
    out = torch.matmul(p_prefix.reshape(count, heads, classes * lq, lp), prefix_v)
    return out.view(count, heads, classes, lq, hd) + torch.matmul(p_own, v)


@dataclass(frozen=True)
class _Packing:
    """Index tensors for the suffixes of C classes, packed without padding (T tokens).

    ``pad[c * Ls + j]``: packed row of token j of class c (rows past a class's end repeat
    its last token; the causal mask hides them and their outputs are dropped);
    ``unpad[t]``: padded slot of packed token t; ``last``: packed row of each class's EOT;
    ``keep_last``: (C, 1, Ls) the suffix keys each EOT query sees.
    """

    classes: int
    longest: int
    pad: torch.Tensor
    unpad: torch.Tensor
    last: torch.Tensor
    keep_last: torch.Tensor
    token_class: torch.Tensor
    token_offset: torch.Tensor


def _packing(lengths: torch.Tensor, longest: int) -> _Packing:
    classes = int(lengths.numel())
    device = lengths.device
    starts = torch.cumsum(lengths, 0) - lengths
    token_class = torch.repeat_interleave(torch.arange(classes, device=device), lengths)
    token_offset = torch.arange(token_class.numel(), device=device) - starts[token_class]
    offsets = torch.arange(longest, device=device)
    pad = starts[:, None] + torch.minimum(offsets[None, :], lengths[:, None] - 1)
    return _Packing(
        classes=classes,
        longest=longest,
        pad=pad.flatten(),
        unpad=token_class * longest + token_offset,
        last=starts + lengths - 1,
        keep_last=(offsets[None, :] < lengths[:, None]).unsqueeze(1),
        token_class=token_class,
        token_offset=token_offset,
    )


def _suffix_pass(
    model: nn.Module,
    x: torch.Tensor,
    pack: _Packing,
    *prefix_kv: torch.Tensor,
) -> torch.Tensor:
    """Projected EOT features (P, C, D) of C packed suffixes ``x`` (1, T, w) after P prefixes.

    ``prefix_kv`` holds the per-layer keys, then the per-layer values, (P, H, Lp, hd) each
    (flat, so that activation checkpointing sees them as tensor inputs).
    """
    blocks = model.transformer.resblocks
    n_layers = len(blocks)
    keys, values = prefix_kv[:n_layers], prefix_kv[n_layers:]
    count = keys[0].shape[0]
    width = x.shape[-1]
    classes, longest = pack.classes, pack.longest
    causal = torch.ones(longest, longest, dtype=torch.bool, device=x.device).tril()
    for i, block in enumerate(blocks):
        heads = block.attn.num_heads
        hd = width // heads
        qkv = _in_projection(block, x)  # (1 or P, T, 3w): the first layer's is the same for all
        px = qkv.shape[0]
        # (3, Px, H, T, hd) as a view; index_select pads and makes it head-major in one copy
        heads_first = qkv.view(px, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        if i + 1 < n_layers:
            padded = heads_first.index_select(3, pack.pad).view(3, px, heads, classes, longest, hd)
            q, k, v = padded.unbind(0)
            attended = _joint_attention(q, k, v, keys[i], values[i], causal)
            # (P, H, C, Ls, hd) -> packed (P, T, w): drop the padding, heads last, one copy
            attended = attended.view(count, heads, classes * longest, hd).transpose(1, 2)
            attended = attended.index_select(1, pack.unpad).view(count, -1, width)
            x = _finish_block(block, x, attended)
        else:
            # Only the EOT token's output is read: its query, the out-projection and the MLP
            # run on the C EOT rows; the other suffix tokens contribute keys and values only.
            q = heads_first[0].index_select(2, pack.last).view(px, heads, classes, 1, hd)
            kv = heads_first[1:].index_select(3, pack.pad).view(2, px, heads, classes, longest, hd)
            k, v = kv.unbind(0)
            attended = _joint_attention(q, k, v, keys[i], values[i], pack.keep_last)
            attended = attended.view(count, heads, classes, hd).transpose(1, 2)
            x = _finish_block(
                block, x.index_select(1, pack.last), attended.reshape(count, classes, width)
            )
    x = model.ln_final(x)
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x


def _runs(total: int, limit: int) -> list[int]:
    """``total`` items cut into consecutive runs of at most ``limit``, the last one full.

    Every run but the last is recomputed in the backward pass, so the last is as
    large as allowed and the others share the rest evenly (fewer, even blocks).
    """
    if total <= limit:
        return [total]
    rest = total - limit
    parts = -(-rest // limit)
    base, extra = divmod(rest, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)] + [limit]


def plan_blocks(
    count: int, num_classes: int, chunk_size: int | None
) -> tuple[list[int], list[int]]:
    """How :func:`encode_shared_prefix` cuts P x K sequences into blocks.

    Returns the sizes of the runs of consecutive prefixes (images) and of
    consecutive classes; every (image run, class run) pair is one block of at most
    ``chunk_size`` sequences: whole images when a chunk holds all K classes, else
    one image at a time with the classes cut into runs.
    """
    if chunk_size is None or chunk_size >= count * num_classes:
        return [count], [num_classes]
    if chunk_size >= num_classes:
        return _runs(count, chunk_size // num_classes), [num_classes]
    return [1] * count, _runs(num_classes, chunk_size)


def encode_shared_prefix(
    model: nn.Module,
    prefix: torch.Tensor,
    suffix: torch.Tensor,
    suffix_length: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """EOT features of every (prefix, suffix) prompt, the prefix encoded once per row.

    Prompt (p, k) is the token sequence ``prefix[p] ++ suffix[k, :suffix_length[k]]``
    and its EOT token is the last token of its suffix. The result equals
    :func:`encode_truncated` of the P x K concatenated sequences within float error,
    and gradients flow back into ``prefix`` (and ``suffix``, if it requires them).

    Args:
        model: an open_clip CLIP model for which :func:`shared_prefix_supported` holds.
        prefix: (P, Lp, d) token embeddings of the P distinct prefixes (``[SOS] ctx``).
        suffix: (K, Ls, d) token embeddings of the K suffixes (``<name> . [EOS]``),
            right-padded to the longest; position ``Lp + j`` is suffix token j.
        suffix_length: (K,) number of tokens of each suffix, EOT included (>= 1).
        chunk_size: encode at most this many (prefix, suffix) sequences at once.
            Blocks of images x classes are formed; when gradients are needed every
            block but the last is recomputed in the backward pass (activation
            checkpointing), so peak memory stays that of about one block whatever
            P x K is. ``None``: everything at once.

    Returns:
        (P, K, D) projected EOT features.
    """
    if prefix.dim() != 3 or suffix.dim() != 3:
        raise ValueError(
            f"expected (P, Lp, d) prefix and (K, Ls, d) suffix embeddings, got "
            f"{tuple(prefix.shape)} and {tuple(suffix.shape)}"
        )
    count, prefix_length, _ = prefix.shape
    num_classes = suffix.shape[0]
    lengths_cpu = suffix_length.detach().to("cpu", torch.long)
    if lengths_cpu.numel() != num_classes or int(lengths_cpu.min()) < 1:
        raise ValueError("every suffix needs at least its EOT token")
    if prefix_length + int(lengths_cpu.max()) > model.positional_embedding.shape[0]:
        raise ValueError("prompts longer than the model's context length")
    dtype = _cast_dtype(model)
    device = prefix.device
    keys, values = _prefix_pass(model, prefix)

    # Classes sorted by suffix length, so class chunks pad their attention core little.
    order = torch.argsort(lengths_cpu, stable=True)
    image_runs, class_runs = plan_blocks(count, num_classes, chunk_size)
    needs_grad = torch.is_grad_enabled() and (prefix.requires_grad or suffix.requires_grad)
    n_blocks = len(image_runs) * len(class_runs)

    class_blocks = []
    start = 0
    for run in class_runs:
        idx = order[start : start + run]
        start += run
        lens = lengths_cpu[idx]
        pack = _packing(lens.to(device), int(lens.max()))
        idx = idx.to(device)
        tokens = suffix[idx[pack.token_class], pack.token_offset].to(dtype)
        tokens = tokens + model.positional_embedding[prefix_length + pack.token_offset].to(dtype)
        class_blocks.append((pack, tokens.unsqueeze(0)))

    rows = []
    block = 0
    first = 0
    for run in image_runs:
        kv = [t[first : first + run] for t in (*keys, *values)]
        first += run
        pieces = []
        for pack, tokens in class_blocks:
            block += 1
            # The last block is not checkpointed: the backward pass reaches it first and
            # frees its activations before recomputing any other block, so peak memory is
            # still about one block while one block's recomputation is saved.
            if needs_grad and block < n_blocks:
                out = checkpoint(_suffix_pass, model, tokens, pack, *kv, use_reentrant=False)
            else:
                out = _suffix_pass(model, tokens, pack, *kv)
            pieces.append(out)
        rows.append(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
    out = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_classes)
    return out[:, inverse.to(out.device)]
