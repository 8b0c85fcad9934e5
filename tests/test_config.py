import pytest

from fastinfer import config
from fastinfer.errors import ConfigError


def test_default_file_matches_defaults():
    assert config.load_config() == config.Settings()


def test_spec_nesting_is_accepted(tmp_path):
    path = tmp_path / "live.yaml"
    path.write_text(
        "live_trading:\n  models:\n    verify_checksums: true\n    allow_unsigned: true\n"
        "    family_priority: [xgboost, lightgbm]\n    seq_buffer_size: 30\n    seq_warmup_bars: 10\n"
    )
    s = config.load_config(path)
    assert s.models.allow_unsigned and s.models.family_priority == ("xgboost", "lightgbm")
    assert s.models.seq_buffer_size == 30


@pytest.mark.parametrize(
    "text,match",
    [
        ("models:\n  verify_checksum: true\n", r"models\.verify_checksum: unknown key"),
        ("models:\n  seq_buffer_size: '60'\n", r"models\.seq_buffer_size: expected an integer"),
        ("models:\n  lazy_load: 1\n", r"models\.lazy_load: expected true/false"),
        ("models:\n  family_priority: lightgbm\n", r"models\.family_priority: expected a list"),
        ("models:\n  seq_padding: mirror\n", r"models\.seq_padding: 'mirror' is not one of"),
        ("executor:\n  intra_op_threads: -1\n", r"executor\.intra_op_threads: must be >= 0"),
        ("models:\n  seq_buffer_size: 10\n  seq_warmup_bars: 20\n", r"seq_warmup_bars: 20 exceeds"),
        ("speed: 11\n", r"speed: unknown key"),
        ("models: [1, 2]\n", r"models: expected a mapping"),
        ("models:\n  lazy_load: [\n", r"not valid YAML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        config.load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load_config(tmp_path / "nope.yaml")
