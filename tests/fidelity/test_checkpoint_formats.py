"""Checkpoint formats load into exactly the model their authors ran.

* OpenAI state dicts (fp16, OpenAI's layout) for RN50 and ViT-B/16: compared
  with open_clip's own ``build_model_from_openai_state_dict`` (QuickGELU), with
  and without ``arch``; a plain-GELU build of the same weights differs, which is
  the trap these tests guard (open_clip's ``RN50``/``ViT-B-16`` configs are GELU).
* Hugging Face ``transformers`` CLIP folders: compared with
  ``transformers.CLIPModel`` itself (a tiny random one, both activations,
  safetensors and ``pytorch_model.bin``; transformers 5.24's ``save_pretrained``
  always writes safetensors, so the ``.bin`` folder is written with ``torch.save``).
* open_clip hub folders (``open_clip_config.json`` + weights), and the folders
  an interrupted download leaves.

Features are compared unnormalised, as ``FrozenCLIP.encode_image`` /
``encode_text`` return them with ``normalize=False``.
"""

from __future__ import annotations

import json
import shutil

import open_clip
import pytest
import torch
from open_clip.model import CLIP, QuickGELU, build_model_from_openai_state_dict
from safetensors.torch import load_file, save_file
from vp_testing import rel_err, tiny_open_clip_config

from visprompt.backbone import load_backbone
from visprompt.errors import VispromptError

TEXTS = ["a photo of a dog.", "a diagram of a small red bicycle", "x"]
TOL = 1e-5


def activations(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --------------------------------------------------------------------------- OpenAI


def random_openai_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """Random fp16 weights in the layout of open_clip's ``{arch}-quickgelu`` (OpenAI's layout).

    The shapes come from a model built on the meta device (no memory, no init),
    so this is much cheaper than initialising the real model on CPU.
    """
    with torch.device("meta"):
        shapes = open_clip.create_model(f"{arch}-quickgelu", device="meta").state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in shapes.items():
        if not meta.is_floating_point():  # BatchNorm's num_batches_tracked
            value = torch.zeros(meta.shape, dtype=meta.dtype)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(meta.shape, generator=gen)
        elif key == "logit_scale":
            value = torch.tensor(4.6052)
        elif meta.ndim == 1 and key.endswith("weight"):  # LayerNorm / BatchNorm scales
            value = 1 + 0.1 * torch.randn(meta.shape, generator=gen)
        else:
            value = 0.02 * torch.randn(meta.shape, generator=gen)
        state[key] = value.reshape(meta.shape).half()
    return state


@pytest.fixture(scope="module", params=["RN50", "ViT-B-16"])
def openai_file(request, tmp_path_factory):
    """A random OpenAI-layout state dict of a real architecture, saved in fp16 as OpenAI does,
    with open_clip's reference features (QuickGELU) and those of a plain-GELU build."""
    arch = request.param
    state = random_openai_state(arch, seed=0)
    path = tmp_path_factory.mktemp("openai") / f"{arch}.pt"
    torch.save(state, path)
    reference = build_model_from_openai_state_dict(dict(state)).float().eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = open_clip.tokenize(TEXTS)
    with torch.no_grad():
        ref = (reference.encode_image(images), reference.encode_text(ids))
        # the trap: the same weights under nn.GELU, as open_clip.create_model(arch) builds them
        for module in list(reference.modules()):
            for name, child in module.named_children():
                if isinstance(child, QuickGELU):
                    setattr(module, name, torch.nn.GELU())
        gelu = (reference.encode_image(images), reference.encode_text(ids))
    return {"arch": arch, "path": path, "images": images, "ref": ref, "gelu": gelu}


@pytest.mark.parametrize("give_arch", [False, True], ids=["inferred", "named-arch"])
def test_openai_fp16_weights_load_with_quickgelu(openai_file, give_arch):
    arch = openai_file["arch"]
    backbone = load_backbone(
        checkpoint=openai_file["path"], arch=arch if give_arch else None, device="cpu"
    )
    assert activations(backbone.model) == {"QuickGELU"}
    if give_arch:
        assert backbone.identity.arch == f"{arch}-quickgelu"
    images, (ref_image, ref_text) = openai_file["images"], openai_file["ref"]
    err_image = rel_err(backbone.encode_image(images, normalize=False), ref_image)
    err_text = rel_err(backbone.encode_text(TEXTS, normalize=False), ref_text)
    assert err_image <= TOL, err_image
    assert err_text <= TOL, err_text


def test_plain_gelu_would_give_other_features(openai_file):
    """The test above can fail: open_clip's plain config is GELU, and GELU changes the features."""
    with torch.device("meta"):
        plain = open_clip.create_model(openai_file["arch"], device="meta")
    assert activations(plain) == {"GELU"}
    (gelu_image, gelu_text), (ref_image, ref_text) = openai_file["gelu"], openai_file["ref"]
    assert rel_err(gelu_text, ref_text) > 1e-3
    if openai_file["arch"].startswith("ViT"):  # a ResNet image tower has ReLUs, no GELU
        assert rel_err(gelu_image, ref_image) > 1e-3


def test_openai_weights_with_contradicting_arch_name_both(openai_file):
    arch = openai_file["arch"]
    other = "ViT-B-16" if arch == "RN50" else "RN50"
    with pytest.raises(VispromptError) as exc:
        load_backbone(checkpoint=openai_file["path"], arch=other, device="cpu")
    message = one_line(exc)
    assert f"OpenAI {arch} (" in message and f"backbone.arch is {other!r}" in message
    assert f"backbone.arch={arch}" in message


def _tiny_cfg(quick_gelu: bool) -> dict:
    return tiny_open_clip_config(quick_gelu)


@pytest.fixture(scope="module")
def gelu_arch(tmp_path_factory):
    """A small GELU open_clip config with no ``-quickgelu`` variant, and a model of it."""
    folder = tmp_path_factory.mktemp("cfgs")
    (folder / "vp-tiny-gelu.json").write_text(json.dumps(_tiny_cfg(False)))
    open_clip.add_model_config(folder)
    torch.manual_seed(2)
    return "vp-tiny-gelu", CLIP(**_tiny_cfg(False)).eval()


def test_fp16_openai_weights_force_quickgelu_without_a_quickgelu_config(tmp_path, gelu_arch):
    arch, model = gelu_arch
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path / "openai.pt"
    torch.save(state, path)
    backbone = load_backbone(checkpoint=path, arch=arch, device="cpu")
    assert activations(backbone.model) == {"QuickGELU"}
    assert backbone.identity.arch == f"{arch}-quickgelu"
    reference = build_model_from_openai_state_dict(dict(state)).float().eval()
    ids = backbone.tokenize(TEXTS)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(backbone.model.encode_text(ids), reference.encode_text(ids)) <= TOL
        assert rel_err(backbone.model.encode_image(images), reference.encode_image(images)) <= TOL


def test_fp32_checkpoint_with_named_arch_keeps_its_activation(tmp_path, gelu_arch):
    """open_clip's own checkpoints share OpenAI's layout (LAION's are GELU, fp32): ``arch`` rules."""
    arch, model = gelu_arch
    path = tmp_path / "laion-style.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    backbone = load_backbone(checkpoint=path, arch=arch, device="cpu")
    assert activations(backbone.model) == {"GELU"} and backbone.identity.arch == arch
    ids = backbone.tokenize(TEXTS)
    with torch.no_grad():
        assert rel_err(backbone.model.encode_text(ids), model.encode_text(ids)) <= TOL


# ----------------------------------------------------------------- Hugging Face

transformers = pytest.importorskip("transformers")


def _hf_clip(hidden_act: str, eos_token_id: int = 49407, layer_norm_eps: float = 1e-5):
    tower = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_act": hidden_act,
        "layer_norm_eps": layer_norm_eps,
    }
    config = transformers.CLIPConfig(
        text_config={
            **tower,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
            "eos_token_id": eos_token_id,
        },
        vision_config={**tower, "patch_size": 8, "image_size": 32},
        projection_dim=32,
    )
    torch.manual_seed(3)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # LayerNorm ones and zero biases would hide mapping mistakes
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _save_hf(model, folder, weights: str = "safetensors"):
    if weights == "safetensors":
        model.save_pretrained(folder)
    else:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    ).save_pretrained(folder)
    return folder


HF_CASES = {
    "quick_gelu-safetensors": ("quick_gelu", 49407, 1e-5, "safetensors"),
    "gelu-bin-eps1e-6": ("gelu", 49407, 1e-6, "bin"),
    "legacy-eos2-bin": ("quick_gelu", 2, 1e-5, "bin"),
}


@pytest.fixture(scope="module", params=list(HF_CASES))
def hf_folder(request, tmp_path_factory):
    act, eos, eps, weights = HF_CASES[request.param]
    model = _hf_clip(act, eos, eps)
    folder = _save_hf(model, tmp_path_factory.mktemp("hf"), weights)
    return model, folder, act


def test_hf_clip_folder_matches_transformers(hf_folder):
    hf, folder, act = hf_folder
    backbone = load_backbone(checkpoint=folder, device="cpu")
    assert activations(backbone.model) == {"QuickGELU" if act == "quick_gelu" else "GELU"}
    assert backbone.image_size == 32 and backbone.context_length == 77
    assert backbone.image_mean == (0.5, 0.4, 0.3) and backbone.image_std == (0.2, 0.25, 0.3)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ids = backbone.tokenize(TEXTS)  # SOT ... EOT(49407) then zeros: both poolings pick the EOT
    with torch.no_grad():
        ref_image = hf.get_image_features(pixel_values=images).pooler_output
        ref_text = hf.get_text_features(input_ids=ids).pooler_output
    err_image = rel_err(backbone.encode_image(images, normalize=False), ref_image)
    err_text = rel_err(backbone.encode_text(TEXTS, normalize=False), ref_text)
    assert err_image <= TOL, err_image
    assert err_text <= TOL, err_text
    assert rel_err(backbone.logit_scale, hf.logit_scale.exp().item()) <= TOL


@pytest.fixture(scope="module")
def hf_good(tmp_path_factory):
    model = _hf_clip("quick_gelu")
    return model, _save_hf(model, tmp_path_factory.mktemp("hf-good"))


def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        tower, _, field = key.partition("__")
        if field:
            config[tower][field] = value
        else:
            config[tower] = value
    path.write_text(json.dumps(config))


def test_hf_folder_errors_are_one_line(tmp_path, hf_good):
    _, good = hf_good

    def broken(name):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        return folder

    cases = []
    folder = broken("act")
    _edit_config(folder, text_config__hidden_act="gelu_new", vision_config__hidden_act="gelu_new")
    cases.append((folder, "hidden_act 'gelu_new'"))
    folder = broken("siglip")
    _edit_config(folder, model_type="siglip")
    cases.append((folder, "model_type 'siglip'"))
    folder = broken("json")
    (folder / "config.json").write_text('{"model_type": "clip",')
    cases.append((folder, "cannot be read as JSON"))
    folder = broken("no-weights")
    (folder / "model.safetensors").unlink()
    cases.append((folder, "no weights file \\(model.safetensors or pytorch_model.bin\\)"))
    folder = broken("text-only")
    state = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in state.items() if not k.startswith("vision_model.")},
        folder / "model.safetensors",
    )
    cases.append((folder, "lack vision_model.embeddings.patch_embedding.weight"))
    folder = broken("eos")
    _edit_config(folder, text_config__eos_token_id=7)
    cases.append((folder, "eos_token_id 7"))
    folder = broken("crop")
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    proc["crop_size"] = {"height": 48, "width": 48}
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))
    cases.append((folder, "crops images to 48"))
    for folder, pattern in cases:
        with pytest.raises(VispromptError, match=pattern) as exc:
            load_backbone(checkpoint=folder, device="cpu")
        one_line(exc)


# -------------------------------------------------------------- open_clip folders


def _open_clip_folder(folder, quick_gelu: bool, weights: str):
    torch.manual_seed(5)
    model = CLIP(**_tiny_cfg(quick_gelu)).eval()
    config = {
        "model_cfg": _tiny_cfg(quick_gelu),
        "preprocess_cfg": {"mean": [0.4, 0.5, 0.6], "std": [0.3, 0.2, 0.1]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights == "safetensors":
        save_file(state, folder / "open_clip_model.safetensors")
    else:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return model


@pytest.mark.parametrize(
    ("quick_gelu", "weights"), [(True, "safetensors"), (False, "bin")], ids=["qg-st", "gelu-bin"]
)
def test_open_clip_hub_folder_loads_config_weights_and_preprocessing(tmp_path, quick_gelu, weights):
    model = _open_clip_folder(tmp_path, quick_gelu, weights)
    backbone = load_backbone(checkpoint=tmp_path, device="cpu")
    assert activations(backbone.model) == {"QuickGELU" if quick_gelu else "GELU"}
    assert backbone.image_mean == (0.4, 0.5, 0.6) and backbone.image_std == (0.3, 0.2, 0.1)
    ids = backbone.tokenize(TEXTS)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(backbone.encode_text(TEXTS, normalize=False), model.encode_text(ids)) <= TOL
        assert (
            rel_err(backbone.encode_image(images, normalize=False), model.encode_image(images))
            <= TOL
        )
    assert backbone.identity.fingerprint == load_backbone(checkpoint=tmp_path).identity.fingerprint


def test_open_clip_folder_without_weights_is_refused(tmp_path):
    _open_clip_folder(tmp_path, True, "safetensors")
    (tmp_path / "open_clip_model.safetensors").unlink()  # an interrupted download
    with pytest.raises(
        VispromptError, match="no weights file \\(open_clip_model.safetensors"
    ) as exc:
        load_backbone(checkpoint=tmp_path, device="cpu")
    assert "incomplete" in one_line(exc)


def test_open_clip_folder_with_invalid_json_is_one_line(tmp_path):
    _open_clip_folder(tmp_path, True, "safetensors")
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 32,')
    with pytest.raises(VispromptError, match="open_clip config .* cannot be read as JSON") as exc:
        load_backbone(checkpoint=tmp_path, device="cpu")
    one_line(exc)
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 32}}')
    with pytest.raises(VispromptError, match="open_clip cannot build the model") as exc:
        load_backbone(checkpoint=tmp_path, device="cpu")
    one_line(exc)


def test_folder_with_both_formats_falls_back_to_complete_transformers_weights(tmp_path, hf_good):
    hf, good = hf_good
    shutil.copytree(good, tmp_path / "both")
    folder = tmp_path / "both"
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": _tiny_cfg(True)}))
    backbone = load_backbone(checkpoint=folder, device="cpu")  # open_clip weights missing
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=backbone.tokenize(TEXTS)).pooler_output
    assert rel_err(backbone.encode_text(TEXTS, normalize=False), ref) <= TOL
    (tmp_path / "empty").mkdir()
    with pytest.raises(VispromptError, match="has neither open_clip_config.json"):
        load_backbone(checkpoint=tmp_path / "empty", device="cpu")


def test_hf_and_frozen_encoders_agree_on_padding_after_eot(hf_good):
    """HF pools at the first EOS (49407) or at argmax(ids); FrozenCLIP at argmax(ids): padding
    with EOS ids (as HF's tokenizer pads openai/clip-*) picks the same, first, position."""
    hf, folder = hf_good
    backbone = load_backbone(checkpoint=folder, device="cpu")
    ids = backbone.tokenize(TEXTS)
    eot = ids.argmax(dim=-1)
    padded = ids.clone()
    for row, pos in enumerate(eot.tolist()):
        padded[row, pos:] = 49407
    assert torch.equal(padded.argmax(dim=-1), eot)
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=padded).pooler_output
    ours = backbone.encode_prompts(backbone.embed_tokens(padded), padded.argmax(dim=-1))
    assert rel_err(ours, ref) <= TOL
