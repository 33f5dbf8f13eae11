"""Config system: presets, YAML files, `--set` overrides, and errors that name the problem."""
from __future__ import annotations

import pytest

from symphony.config import (
    CacheConfig,
    SymphonyConfig,
    load_config,
    parse_override,
    preset_names,
    validate,
)
from symphony.errors import SymphonyError

PRESETS = ["qwen2.5-1.5b", "qwen2.5-7b-8gb", "smollm2-135m", "smollm2-135m-cpu", "smollm2-135m-retriever", "tiny"]


def test_preset_names_are_the_shipped_yaml_files():
    assert preset_names() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, SymphonyConfig)
    assert cfg.preset == name
    validate(cfg)  # idempotent: a loaded config is valid
    assert cfg.cache.window >= 1 and cfg.cache.segment_len >= 1


def test_preset_values_come_from_the_yaml():
    tiny = load_config("tiny")
    assert tiny.model.name == "tiny-llama"
    assert (tiny.cache.ledger, tiny.cache.window, tiny.cache.segment_len, tiny.cache.span_len) == (64, 128, 64, 8)
    assert (tiny.calibration.tokens, tiny.calibration.segment_len) == (256, 128)
    # keys a preset leaves out keep the dataclass defaults
    assert tiny.salience.ngram == 3 and tiny.seed == 0

    q7 = load_config("qwen2.5-7b-8gb")
    assert q7.model.quantization == "4bit" and q7.model.device == "cuda" and q7.model.dtype == "bfloat16"


def test_default_config_is_the_embedded_model():
    cfg = load_config()
    assert cfg.preset == "smollm2-135m" and cfg.model.name == "smollm2-135m"


def test_load_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("seed: 7\nmodel:\n  name: tiny-qwen2\ncache:\n  window: 256\n")
    cfg = load_config(str(path))
    assert cfg.preset == "mine"  # the file's stem
    assert cfg.seed == 7 and cfg.model.name == "tiny-qwen2" and cfg.cache.window == 256
    assert cfg.cache.sinks == CacheConfig().sinks  # untouched defaults


def test_yaml_path_may_set_its_own_preset_name(tmp_path):
    path = tmp_path / "x.yml"
    path.write_text("preset: labelled\n")
    assert load_config(str(path)).preset == "labelled"


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(str(path))
    assert cfg.model.name == SymphonyConfig().model.name


def test_missing_yaml_path_errors(tmp_path):
    with pytest.raises(SymphonyError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_errors_in_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(SymphonyError, match="not valid YAML") as ei:
        load_config(str(path))
    assert "\n" not in str(ei.value)


def test_unknown_key_in_yaml_file_errors(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("cache:\n  windw: 10\n")
    with pytest.raises(SymphonyError, match=r"unknown config key 'cache\.windw'"):
        load_config(str(path))


def test_overrides_coerce_types():
    cfg = load_config(
        "tiny",
        [
            "cache.window=2048",  # int
            "model.trust_remote_code=true",  # bool
            "model.name=tiny-qwen2",  # str
            "seed=3",
            "salience.novelty_weight=2",  # int literal into a float field
            "calibration.text=builtin",
        ],
    )
    assert cfg.cache.window == 2048 and type(cfg.cache.window) is int
    assert cfg.model.trust_remote_code is True
    assert cfg.model.name == "tiny-qwen2"
    assert cfg.seed == 3
    assert cfg.salience.novelty_weight == 2.0 and type(cfg.salience.novelty_weight) is float


@pytest.mark.parametrize("text,expected", [("true", True), ("false", False), ("on", True), ("off", False),
                                           ("yes", True), ("no", False), ("1", True), ("0", False)])
def test_bool_override_spellings(text, expected):
    assert load_config("tiny", [f"model.trust_remote_code={text}"]).model.trust_remote_code is expected


def test_string_override_that_looks_like_a_number_stays_a_string():
    assert load_config("tiny", ["calibration.text=123"]).calibration.text == "123"


@pytest.mark.parametrize("text", ["off", "Off", "no", "false"])
def test_off_for_a_string_key_is_off_not_false(text, tmp_path):
    """YAML reads a bare `off` as a bool; the retriever's ablation switch must still read as 'off', from --set
    and from a YAML file alike."""
    assert load_config("tiny", [f"memory.retriever={text}"]).memory.retriever == "off"
    path = tmp_path / "c.yaml"
    path.write_text(f"memory:\n  retriever: {text}\n")
    assert load_config(str(path)).memory.retriever == "off"


def test_integral_float_is_accepted_for_an_int_key():
    assert load_config("tiny", ["cache.window=512.0"]).cache.window == 512


def test_later_override_wins():
    assert load_config("tiny", ["cache.window=10", "cache.window=20"]).cache.window == 20


def test_overrides_do_not_leak_between_loads():
    load_config("tiny", ["cache.window=999"])
    assert load_config("tiny").cache.window == 128


@pytest.mark.parametrize(
    "override,key,expects",
    [
        ("cache.window=abc", "cache.window", "int"),
        ("cache.window=2.5", "cache.window", "int"),
        ("cache.window=true", "cache.window", "int"),  # a bool must not silently become 1
        ("salience.novelty_weight=heavy", "salience.novelty_weight", "float"),
        ("salience.novelty_weight=yes", "salience.novelty_weight", "float"),
        ("model.trust_remote_code=maybe", "model.trust_remote_code", "bool"),
        ("model.trust_remote_code=2", "model.trust_remote_code", "bool"),
    ],
)
def test_bad_type_errors_name_key_and_type(override, key, expects):
    with pytest.raises(SymphonyError) as ei:
        load_config("tiny", [override])
    msg = str(ei.value)
    assert f"'{key}'" in msg and f"expects {expects}" in msg


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(SymphonyError) as ei:
        load_config("tiny", ["cache.windw=10"])
    msg = str(ei.value)
    assert "unknown config key 'cache.windw'" in msg
    for valid in ("cache.sinks", "cache.ledger", "cache.window", "cache.segment_len", "cache.span_len"):
        assert valid in msg


def test_unknown_top_level_key_lists_sections():
    with pytest.raises(SymphonyError) as ei:
        load_config("tiny", ["sede=1"])
    msg = str(ei.value)
    assert "'sede'" in msg
    for valid in ("seed", "model", "cache", "salience", "calibration"):
        assert valid in msg


def test_unknown_nested_section_errors():
    with pytest.raises(SymphonyError) as ei:
        load_config("tiny", ["cahce.window=10"])
    msg = str(ei.value)
    assert "unknown config key 'cahce'" in msg and "cache" in msg


def test_key_nested_below_a_scalar_errors():
    with pytest.raises(SymphonyError, match="cache.window"):
        load_config("tiny", ["cache.window.size=3"])


def test_section_set_to_a_scalar_errors():
    with pytest.raises(SymphonyError, match="'cache' must be a mapping"):
        load_config("tiny", ["cache=3"])


def test_unknown_preset_lists_presets():
    with pytest.raises(SymphonyError) as ei:
        load_config("no-such-preset")
    msg = str(ei.value)
    assert "unknown config preset 'no-such-preset'" in msg
    for name in PRESETS:
        assert name in msg


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.device=tpu", "model.device"),
        ("model.dtype=int3", "model.dtype"),
        ("model.quantization=2bit", "model.quantization"),
        ("cache.policy=lru", "cache.policy"),
    ],
)
def test_invalid_choice_lists_allowed_values(override, key):
    with pytest.raises(SymphonyError) as ei:
        load_config("tiny", [override])
    msg = str(ei.value)
    assert f"'{key}' must be one of" in msg
    assert override.split("=")[1] in msg


def test_device_choice_message_lists_options():
    with pytest.raises(SymphonyError, match="cpu, cuda, auto"):
        load_config("tiny", ["model.device=tpu"])


@pytest.mark.parametrize("override", ["cache.window=0", "cache.segment_len=0", "cache.span_len=0", "cache.sinks=-1",
                                      "cache.ledger=-5"])
def test_non_positive_cache_sizes_error(override):
    key = override.split("=")[0]
    with pytest.raises(SymphonyError, match=f"'{key}' must be positive"):
        load_config("tiny", [override])


def test_zero_sinks_and_ledger_are_allowed():
    cfg = load_config("tiny", ["cache.sinks=0", "cache.ledger=0"])
    assert cfg.cache.sinks == 0 and cfg.cache.ledger == 0


def test_override_without_equals_errors():
    with pytest.raises(SymphonyError, match="key=value"):
        load_config("tiny", ["cache.window"])


def test_parse_override():
    assert parse_override("cache.window=2048") == ("cache.window", 2048)
    assert parse_override(" model.name = a/b ") == ("model.name", "a/b")
    assert parse_override("calibration.text=") == ("calibration.text", "")
    assert parse_override("model.name=x=y") == ("model.name", "x=y")


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_config("tiny", ["cache.window=300", "seed=5"])
    path = tmp_path / "dumped.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = load_config(str(path))
    assert again.to_dict() == cfg.to_dict()


def test_artifacts_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMPHONY_HOME", str(tmp_path / "home"))
    assert load_config("tiny").artifacts_path == tmp_path / "home"
    cfg = load_config("tiny", [f"artifacts_dir={tmp_path / 'elsewhere'}"])
    assert cfg.artifacts_path == tmp_path / "elsewhere"


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_recall_min_gain_is_a_share(value):
    with pytest.raises(SymphonyError, match="'cache.recall_min_gain' must be between 0 and 1"):
        load_config("tiny", [f"cache.recall_min_gain={value}"])
