"""Exact, cheap forward passes of CLIP's causal text transformer.

Two facts make prompt encoding cheaper than open_clip's ``encode_text`` without
changing its result:

* the transformer is causal, so positions after the end-of-text (EOT) token
  never influence the EOT feature: a batch is cut to ``max(eot) + 1`` tokens;
* chunks of sequences can be encoded one after another under activation
  checkpointing, so peak memory stays bounded for B x K per-image prompts.
"""

from __future__ import annotations

import torch
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
