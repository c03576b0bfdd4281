"""Run configuration: defaults of the reference, overrides, validation at the edge."""

from __future__ import annotations

import pytest
import yaml

from visprompt.config import diff_configs, load_run_config, validate_run_config
from visprompt.errors import VispromptError

BASE = ["backbone.name=tiny-vit", "data.dataset=folder", "method.name=coop"]


def test_defaults_follow_the_reference_configs():
    cfg = load_run_config(None, BASE)
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.002
    assert cfg.optim.scheduler == "cosine" and cfg.optim.warmup_epochs == 1
    assert cfg.optim.warmup_lr == 1e-5 and cfg.optim.batch_size == 32
    assert cfg.method.n_ctx == 16 and cfg.method.init_std == 0.02
    assert cfg.method.class_token_position == "end" and cfg.method.ctx_init is None
    assert cfg.data.shots == 16 and cfg.noise.type == "none"


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "backbone": {"name": "tiny-vit"},
                "data": {"dataset": "folder", "root": "/data", "shots": 4},
                "noise": {"type": "sym", "rate": 0.25},
                "method": {"name": "coop", "n_ctx": 4, "ctx_init": "a photo of a"},
                "optim": {"epochs": 5},
            }
        )
    )
    cfg = load_run_config(path, ["optim.lr=0.01", "noise.rate=0.5", "method.class_specific=true"])
    assert cfg.optim.lr == 0.01 and cfg.optim.epochs == 5
    assert cfg.noise.rate == 0.5 and cfg.method.class_specific is True
    assert cfg.method.ctx_init == "a photo of a"
    # the resolved config round-trips through YAML to the same run identity
    dumped = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))
    assert validate_run_config(dumped).run_id() == cfg.run_id()
    assert validate_run_config(dumped).method.class_specific is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown option 'optim.lrr'; allowed here: batch_size"),
        ("method.nctx=4", "unknown option 'method.nctx'; allowed here: class_specific"),
        ("method.name=nope", "unknown method 'nope'; choose one of: "),
        ("optim.lr=0", "optim.lr must be > 0"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.epochs=0", "optim.epochs must be at least 1"),
        ("optim.batch_size=0", "optim.batch_size must be at least 1"),
        ("optim.epochs=many", "bad value for 'optim.epochs'"),
        ("noise.type=gaussian", "bad value for 'noise.type'"),
        ("data.shots=0", "data.shots must be at least 1"),
        ("precision=fp8", "bad value for 'precision'"),
        ("data.crop_scale=[0.9, 0.5]", "data.crop_scale must be [min, max] with 0 < min <= max"),
        ("data.crop_scale=[0, 1]", "data.crop_scale must be [min, max] with 0 < min <= max"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(VispromptError) as info:
        load_run_config(None, [*BASE, override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_noise_rate_range_and_type_consistency():
    for rate in ("1.0", "-0.1", "1.5"):
        with pytest.raises(VispromptError, match=r"noise.rate must be in \[0, 1\)"):
            load_run_config(None, [*BASE, "noise.type=sym", f"noise.rate={rate}"])
    with pytest.raises(VispromptError, match="noise.type none injects no noise"):
        load_run_config(None, [*BASE, "noise.rate=0.5"])


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(VispromptError, match="missing section 'backbone'"):
        load_run_config(None, ["data.dataset=folder", "method.name=coop"])
    with pytest.raises(VispromptError, match="missing option 'method.name'"):
        load_run_config(None, ["backbone.name=tiny-vit", "data.dataset=folder"])
    with pytest.raises(VispromptError, match="config file not found"):
        load_run_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(VispromptError, match="not valid YAML"):
        load_run_config(bad)
    with pytest.raises(VispromptError, match="has no '='"):
        load_run_config(None, [*BASE, "optim.lr"])


def test_run_identity_ignores_device_and_cache_location():
    a = load_run_config(None, [*BASE, "backbone.device=cpu", "data.cache_dir=/tmp/x"])
    b = load_run_config(None, [*BASE, "backbone.device=auto"])
    c = load_run_config(None, [*BASE, "optim.lr=0.1"])
    assert a.run_id() == b.run_id() != c.run_id()
    assert diff_configs(b.to_dict(), c.to_dict()) == ["optim.lr"]


# ---------------------------------------------------------------- OmegaConf: ???, ${...}, dotlists


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_a_required_value_left_unset_names_the_key_and_the_fix(tmp_path):
    path = write(
        tmp_path,
        "backbone: {name: tiny-vit}\ndata:\n  dataset: folder\n  root: ???\nmethod: {name: coop}\n",
    )
    with pytest.raises(VispromptError) as info:
        load_run_config(path)
    assert str(info.value) == (
        "missing value for data.root (??? in the config); pass --set data.root=VALUE"
    )
    assert load_run_config(path, ["data.root=/d"]).data.root == "/d"


def test_interpolations_resolve_after_the_overrides(tmp_path):
    path = write(
        tmp_path,
        "backbone: {name: tiny-vit}\n"
        "data:\n  dataset: folder\n  root: /data/${data.dataset}\n  seed: 3\n"
        "method: {name: coop}\n"
        "seed: ${data.seed}\n",
    )
    cfg = load_run_config(path, ["data.dataset=csv", "data.seed=7"])
    assert cfg.data.root == "/data/csv" and cfg.seed == 7
    broken = write(tmp_path, path.read_text().replace("${data.seed}", "${data.nope}"))
    with pytest.raises(VispromptError, match=r"cannot resolve the config at seed: .*data\.nope"):
        load_run_config(broken)


def test_override_values_are_yaml_and_a_value_is_not_a_section():
    cfg = load_run_config(None, [*BASE, "optim.lr=1e-3", "data.crop_scale=[0.5,1.0]"])
    assert cfg.optim.lr == 0.001 and cfg.data.crop_scale == (0.5, 1.0)
    with pytest.raises(VispromptError, match="cannot set optim.lr.x: optim.lr holds a value"):
        load_run_config(None, [*BASE, "optim.lr=0.1", "optim.lr.x=1"])
