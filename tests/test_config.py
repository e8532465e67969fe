import pytest

from hetgan.config import TrainConfig, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict
from hetgan.errors import ConfigError
from hetgan.presets import PRESETS, get_preset


def test_override_parses_and_types_values():
    cfg = apply_overrides(TrainConfig(), ["train.batch_size=128", "optim.g_lr=1e-3", "accel.channels_last=true"])
    assert cfg.train.batch_size == 128
    assert cfg.optim.g_lr == pytest.approx(1e-3)
    assert cfg.accel.channels_last is True


def test_a_text_field_takes_the_text_as_typed():
    cfg = apply_overrides(TrainConfig(), ["train.evalnet=1.0e3", "loss.augment=true", "data.spec= mnist5k "])
    assert (cfg.train.evalnet, cfg.loss.augment, cfg.data.spec) == ("1.0e3", "true", "mnist5k")


def test_int_is_accepted_for_float_field():
    cfg = apply_overrides(TrainConfig(), ["train.kimg=3"])
    assert cfg.train.kimg == 3.0 and isinstance(cfg.train.kimg, float)


def test_unknown_field_suggests_the_closest_valid_one():
    for typo, meant in (("train.batch=128", "train.batch_size"), ("batch_size=128", "train.batch_size"),
                        ("loss.nam=hinge", "loss.name"), ("optim.glr=1e-3", "optim.g_lr")):  # fmt: skip
        with pytest.raises(ConfigError) as e:
            apply_overrides(TrainConfig(), [typo])
        assert f"did you mean {meant}?" in str(e.value) and "model.width" not in str(e.value)
    with pytest.raises(ConfigError, match="'zzzz'; valid fields: preset, seed, model.arch"):  # nothing close: the list
        apply_overrides(TrainConfig(), ["zzzz=1"])


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"train.batch_size expects int, got 'many'"):
        apply_overrides(TrainConfig(), ["train.batch_size=many"])


def test_missing_equals_sign_explains_form():
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        apply_overrides(TrainConfig(), ["train.batch_size"])


def test_range_validation():
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 2"):
        apply_overrides(TrainConfig(), ["train.keep_checkpoints=1"])
    with pytest.raises(ConfigError, match="lr_decay must be none, linear or cosine"):
        apply_overrides(TrainConfig(), ["optim.lr_decay=step"])
    with pytest.raises(ConfigError, match="decay_end_kimg must be > optim.decay_start_kimg"):
        apply_overrides(TrainConfig(), ["optim.lr_decay=linear", "optim.decay_start_kimg=100"])
    with pytest.raises(ConfigError, match="multiple of loss.pack"):
        apply_overrides(TrainConfig(), ["loss.pack=3", "train.batch_size=64"])


def test_range_errors_say_the_value_given():
    with pytest.raises(ConfigError, match=r"accel.precision must be fp32, bf16 or fp16 \(got 'fp8'\)"):
        apply_overrides(TrainConfig(), ["accel.precision=fp8"])
    with pytest.raises(ConfigError, match=r"\(got optim.g_lr=0.0, optim.d_lr=0.0002\)"):
        apply_overrides(TrainConfig(), ["optim.g_lr=0", "optim.d_lr=2e-4"])


def test_yaml_round_trip(tmp_path):
    cfg = get_preset("mlp_grid25")
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert to_dict(load_yaml(path)) == to_dict(cfg)


def test_yaml_cannot_construct_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(path)


def test_config_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 2\n# a comment\ntrain:\n  kimg: 0.1\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 5: unknown config field 'train.batchsize'"):
        load_yaml(path)
    path.write_text("train:\n  kimg: lots\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 2: train.kimg expects float, got 'lots'"):
        load_yaml(path)
    path.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 2, column 1: not valid YAML \(expected ',' or ']'"):
        load_yaml(path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path / 'nope.yaml'}: config file does not exist$"):
        load_yaml(tmp_path / "nope.yaml")
    path.write_bytes(b"seed: \xff\n")
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_yaml(path)


def test_from_dict_rejects_unknown_section():
    with pytest.raises(ConfigError, match="unknown config field 'nonsense.x'"):
        from_dict({"nonsense": {"x": 1}})


def test_every_preset_builds_and_validates():
    for name in PRESETS.names():
        assert get_preset(name).preset == name


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"unknown preset 'stylegan9'; valid: .*dcgan_mnist"):
        get_preset("stylegan9")
