"""The shipped demo backbone ``demo-tiny``: a small CLIP pretrained on the synthetic world.

``demo-tiny`` is a real open_clip ``CLIP`` (ViT image tower, causal text tower
with EOT pooling, the standard 49408-token CLIP BPE tokenizer), contrastively
pretrained by ``scripts/pretrain_demo_clip.py`` on pictures and captions of
:mod:`visprompt.data.synthetic`. Its files live in ``visprompt/assets``:

* ``demo-tiny.json``: the open_clip model config (``embed_dim``,
  ``vision_cfg``, ``text_cfg``);
* ``demo-tiny.safetensors``: the weights. To stay small, the token embedding
  table is stored only for the BPE ids the world's captions use:
  ``token_embedding.ids`` (n,) and ``token_embedding.rows`` (n, width). At load
  time the full ``(vocab_size, width)`` table is rebuilt with **zeros in every
  other row**. Those rows were zero during pretraining too (no caption ever
  used them, so they never received a gradient), so the rebuilt model is
  exactly the trained one; a prompt word outside the world's vocabulary embeds
  as a zero vector;
* ``MODEL_CARD.md``: architecture, data, steps and measured accuracies.

``load_backbone(name="demo-tiny")`` loads it through the same path as real
checkpoints (:func:`~visprompt.backbone.loader.read_state_dict`, strict
loading, :func:`~visprompt.backbone.loader.wrap_frozen`), with the weights
file's SHA-256 as fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from open_clip.model import CLIP

from visprompt.backbone.frozen_clip import BackboneIdentity, FrozenCLIP
from visprompt.backbone.loader import (
    BACKBONES,
    file_sha256,
    load_strict,
    read_state_dict,
    wrap_frozen,
)
from visprompt.errors import VispromptError

NAME = "demo-tiny"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_FILE = f"{NAME}.safetensors"
CONFIG_FILE = f"{NAME}.json"

IDS_KEY = "token_embedding.ids"
ROWS_KEY = "token_embedding.rows"
TABLE_KEY = "token_embedding.weight"


def compress_token_table(
    state: dict[str, torch.Tensor], keep_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Replace the full token embedding table by the rows of ``keep_ids``.

    Args:
        state: a CLIP state dict with ``token_embedding.weight`` (V, d).
        keep_ids: BPE ids to keep (any order; stored sorted and unique).

    Returns:
        A new dict without ``token_embedding.weight`` and with
        ``token_embedding.ids`` (n,) int64 and ``token_embedding.rows`` (n, d).

    Raises:
        ValueError: if a dropped row is not zero (the rebuilt model would then
            differ from the one given).
    """
    table = state[TABLE_KEY]
    ids = torch.unique(keep_ids.to(torch.int64))
    dropped = torch.ones(table.shape[0], dtype=torch.bool)
    dropped[ids] = False
    if torch.count_nonzero(table[dropped]) != 0:
        raise ValueError("token embedding rows outside keep_ids are not zero; they would be lost")
    out = {k: v for k, v in state.items() if k != TABLE_KEY}
    out[IDS_KEY] = ids
    out[ROWS_KEY] = table[ids].clone()
    return out


def expand_token_table(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """Rebuild ``token_embedding.weight`` (vocab_size, d): stored rows, zeros elsewhere."""
    if IDS_KEY not in state or ROWS_KEY not in state:
        raise VispromptError(
            f"demo weights lack {IDS_KEY}/{ROWS_KEY}; regenerate them with "
            "scripts/pretrain_demo_clip.py"
        )
    out = dict(state)
    ids = out.pop(IDS_KEY).to(torch.int64)
    rows = out.pop(ROWS_KEY)
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise VispromptError(
            f"demo weights store token id {int(ids.max())} beyond the vocabulary of "
            f"{vocab_size}; the weights and {CONFIG_FILE} do not belong together"
        )
    table = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    out[TABLE_KEY] = table
    return out


def read_model_config(path: Path) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, ...)."""
    path = Path(path)
    if not path.is_file():
        raise VispromptError(
            f"demo model config not found: {path}; reinstall visprompt, or regenerate the "
            "assets with scripts/pretrain_demo_clip.py"
        )
    return json.loads(path.read_text())


def build_demo_model(config: dict) -> CLIP:
    """An untrained fp32 open_clip ``CLIP`` of the given config, in eval mode."""
    return CLIP(**config).float().eval()


def load_demo_model(assets_dir: Path | str = ASSETS_DIR) -> CLIP:
    """The pretrained demo CLIP (fp32, eval mode) from ``assets_dir``.

    Raises:
        VispromptError: a missing or mismatching weights or config file.
    """
    assets_dir = Path(assets_dir)
    weights = assets_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise VispromptError(
            f"demo backbone weights not found: {weights}; reinstall visprompt, or regenerate "
            "them with `python scripts/pretrain_demo_clip.py`"
        )
    config = read_model_config(assets_dir / CONFIG_FILE)
    model = build_demo_model(config)
    vocab_size = int(model.token_embedding.weight.shape[0])
    state = expand_token_table(read_state_dict(weights), vocab_size)
    load_strict(
        model,
        state,
        f"demo weights {weights} do not match {CONFIG_FILE}",
        "regenerate both with scripts/pretrain_demo_clip.py",
    )
    return model.eval()


@BACKBONES.register(NAME)
def demo_tiny(device: torch.device, precision: str = "fp32") -> FrozenCLIP:
    """The shipped demo backbone as a :class:`FrozenCLIP` (``backbone.name: demo-tiny``)."""
    weights = ASSETS_DIR / WEIGHTS_FILE
    model = load_demo_model(ASSETS_DIR)
    identity = BackboneIdentity(
        name=NAME, arch=NAME, fingerprint=file_sha256(weights), source=str(weights)
    )
    return wrap_frozen(model, identity, device, precision)
