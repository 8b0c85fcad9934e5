import pytest

from fastinfer import families as fam


@pytest.mark.parametrize("spelling", ["lightgbm", "LightGBM", "light_gbm", "Light-GBM", "LIGHTGBM", "lgbm"])
def test_spellings_resolve_to_one_family(spelling):
    assert fam.resolve(spelling) is fam.resolve("lightgbm")


@pytest.mark.parametrize(
    "spelling,name",
    [
        ("RandomForest", "random_forest"),
        ("random_forest", "random_forest"),
        ("ExtraTrees", "extra_trees"),
        ("TabLSTM", "tab_lstm"),
        ("CNN1D_Transformer", "cnn1d_transformer"),
        ("NGBoost", "ngboost"),
        ("QuantileLightGBM", "quantile_lightgbm"),
        ("MetaLearning", "meta_learning"),
    ],
)
def test_display_spellings(spelling, name):
    assert fam.resolve(spelling).name == name


def test_every_spec_family_is_registered():
    spec = {
        "lightgbm",
        "xgboost",
        "catboost",
        "random_forest",
        "extra_trees",
        "ridge",
        "mlp",
        "cnn1d",
        "lstm",
        "transformer",
        "tab_lstm",
        "tab_transformer",
        "tab_cnn",
        "cnn1d_transformer",
        "ngboost",
        "quantile_lightgbm",
        "ensemble",
        "meta_learning",
    }
    assert spec <= {f.name for f in fam.FAMILIES}


def test_unknown_family_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown family: 'gbdt_magic'.*lightgbm"):
        fam.resolve("gbdt_magic")
    assert fam.find("gbdt_magic") is None


def test_categories_and_ranks():
    assert fam.resolve("lstm").input_rank == 3 and fam.resolve("lstm").category is fam.Category.KERAS
    assert fam.resolve("tab_lstm").category is fam.Category.SEQUENTIAL
    assert fam.resolve("mlp").input_rank == 2
    assert fam.resolve("ridge").category is fam.Category.LINEAR
    assert fam.resolve("ngboost").category is fam.Category.PROBABILISTIC
    assert fam.resolve("ensemble").category is fam.Category.META
    assert all(f.input_rank == 3 for f in fam.of_category(fam.Category.SEQUENTIAL))
    assert fam.resolve("lightgbm").formats[0] == "model.txt"
