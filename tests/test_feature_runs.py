"""A run trained on its own features — the seed's names, 100+ vocabulary names, definitions for
custom names and two external columns — served by the live predictor, equal to batch features
of the same definitions through each model's native predict (issue #14)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fastinfer import testing
from fastinfer.compiler import compile_run
from fastinfer.errors import FeatureBuildError, ModelLoadError
from fastinfer.features import FeatureBuilder, FeatureDefinitions, default_feature_set
from fastinfer.loader import ModelLoader
from fastinfer.predictor import LivePredictor

DAILY = 1440.0
DEFINITIONS = {
    "external": ["book_imbalance", "sentiment"],
    "features": {
        "gap": "open / lag(close, 1) - 1",
        "rsi_spread": "rsi(close, 7) - rsi(close, 28)",
        "imbalance_z": "rolling_zscore(book_imbalance, 20)",
    },
}
SEED_NAMES = ["ret_1d", "vol_10d", "rsi_14"]
CUSTOM = ["gap", "rsi_spread", "imbalance_z", "book_imbalance", "sentiment"]
FAMILIES = ["lightgbm", "ridge", "mlp"]


def _with_externals(bars: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    t = np.arange(len(bars))
    return bars.assign(
        book_imbalance=np.tanh(np.sin(t / 7.0) + 0.3 * rng.standard_normal(len(bars))),
        sentiment=np.cumsum(rng.standard_normal(len(bars))) / 10,
    )


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, goog):
    names = list(dict.fromkeys([*SEED_NAMES, *default_feature_set(DAILY), *CUSTOM]))
    assert len(names) >= 100 + len(SEED_NAMES) and set(SEED_NAMES) <= set(names)
    bars = _with_externals(goog.iloc[:1000])
    root = testing.write_market_run(
        tmp_path_factory.mktemp("feature_run"),
        bars,
        FAMILIES,
        horizons=(5,),
        feature_names=tuple(names),
        definitions=DEFINITIONS,
    )
    compile_run(root)
    return root, names


def test_the_run_records_its_definitions_in_the_lock(feature_run):
    root, names = feature_run
    loader = ModelLoader(root)
    assert loader.definitions().hash == FeatureDefinitions.from_dict(DEFINITIONS).hash
    assert loader.lock.definitions_sha256 == loader.definitions_sha256()
    assert all(e.status == "onnx" for e in loader.lock.entries)
    assert sorted(loader.spec("fwd_ret_5d", "ridge").feature_list) == sorted(names)


def test_live_equals_batch_features_through_native_predict(feature_run, goog):
    """Bar by bar with external columns: the live outputs equal the batch features of the same
    definitions (float32, as the live path feeds models) through each model's native predict."""
    root, _ = feature_run
    bars = _with_externals(goog.iloc[:1200])
    live = LivePredictor(root, ["GOOG"], DAILY)
    assert set(live.externals) == {"book_imbalance", "sentiment"} and len(live.union) >= 100
    outs = []
    for t in range(1000, 1200):
        bar = bars.iloc[t]
        out = live.on_bar(
            *(np.array([bar[c]]) for c in ("Open", "High", "Low", "Close", "Volume")),
            external={"book_imbalance": np.array([bar.book_imbalance]), "sentiment": np.array([bar.sentiment])},
        )
        outs.append(out[0].copy())
    # The live predictor saw only bars 1000..1199: its features warm up there, so compare the
    # batch features of those same bars.
    batch = FeatureBuilder(run_root=root).frame(bars.iloc[1000:1200])
    native = ModelLoader(root, prefer_onnx=False)
    compared = 0
    for m in live.models:
        x = batch[list(m.feature_order)].to_numpy(dtype=np.float32).astype(np.float64)
        ok = np.isfinite(x).all(axis=1)
        want = native.load(m.target, m.family.name).predict(x[ok])
        j = live.column_index[(m.target, m.family.name, m.columns[0])]
        got = np.array(outs)[ok, j]
        scale = max(np.abs(want).max(), 1e-12)
        assert np.abs(got - want).max() <= m.family.adapter.tolerance * scale, m.family.name
        assert np.isnan(np.array(outs)[~ok, j]).all()  # not ready: NaN, never a guess
        compared += int(ok.sum())
    assert compared > 3 * 100


def test_missing_or_misshapen_external_column_changes_nothing(feature_run, goog):
    root, _ = feature_run
    live = LivePredictor(root, ["GOOG"], DAILY)
    bar = [np.array([v]) for v in goog.iloc[0][["Open", "High", "Low", "Close", "Volume"]]]
    before = live.state_dict()
    for external, match in (
        (None, "external column"),
        ({"book_imbalance": np.array([0.1])}, "missing"),
        ({"book_imbalance": np.array([0.1, 0.2]), "sentiment": np.array([0.0])}, "shape"),
        (np.zeros((1, 3)), "shape"),
    ):
        with pytest.raises(FeatureBuildError, match=match):
            live.on_bar(*bar, external=external)
        assert live.state_dict() == before


def test_a_name_neither_the_run_nor_the_vocabulary_knows_is_named_at_construction(tmp_path):
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.standard_normal((200, 3)), columns=["ret_1d", "alpha_from_the_research_desk", "rsi_14"])
    root = testing.write_training_run(tmp_path, X, {"fwd_ret_1d": X.sum(axis=1).to_numpy()}, ["ridge"])
    with pytest.raises(ModelLoadError) as info:
        LivePredictor(root, ["GOOG"], DAILY)
    text = str(info.value)
    assert "family='ridge'" in text and "target='fwd_ret_1d'" in text and "alpha_from_the_research_desk" in text
    assert "feature_definitions.yaml" in text and "external" in text


def test_definitions_are_covered_by_the_signature_and_checked_against_the_lock(feature_run, tmp_path):
    import shutil

    from fastinfer import signing
    from fastinfer.errors import IntegrityError, SignatureError

    from ._hardening import hostile

    root, _ = feature_run
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    private, public = signing.generate_keypair(tmp_path / "keys" / "k")
    signing.sign_run(copy, private)
    assert "feature_definitions.yaml" in signing.verify_run(copy, public).files
    signed = ModelLoader(copy, verify_signature=True, trusted_public_key=public)
    assert signed.definitions().hash == FeatureDefinitions.from_dict(DEFINITIONS).hash
    hostile("signature", "feature definitions changed after signing")
    path = copy / "feature_definitions.yaml"
    path.write_text(path.read_text().replace("rsi(close, 7)", "rsi(close, 9)"))
    with pytest.raises(SignatureError, match="feature_definitions.yaml"):
        ModelLoader(copy, verify_signature=True, trusted_public_key=public)
    with pytest.raises(IntegrityError, match="differ from the ones the run was converted with"):
        ModelLoader(copy, strict_checksums=True).definitions()
    assert ModelLoader(copy).definitions().features["rsi_spread"] == "rsi(close, 9) - rsi(close, 28)"  # warns


def test_builder_and_seed_path_read_the_run_under_its_trust_policy(feature_run, tmp_path, monkeypatch):
    """FeatureBuilder(run_root) and SeedPath read the run's feature_definitions.yaml and every
    model_meta.json through a ModelLoader: a file changed after signing is refused naming it, as
    the live path refuses it (they used to read both unchecked)."""
    import shutil
    from pathlib import Path

    from fastinfer import config, signing
    from fastinfer.errors import IntegrityError, SignatureError
    from fastinfer.features import DEFINITIONS_FILE
    from fastinfer.reference import SeedPath

    from ._hardening import hostile

    root, names = feature_run
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    private, public = signing.generate_keypair(tmp_path / "keys" / "k")
    signing.sign_run(copy, private)
    deployed = public.parent / "live.yaml"  # the deployment's default config: signed runs only
    deployed.write_text(f"models:\n  verify_signature: true\n  trusted_public_key: {public.name}\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", deployed)
    builder = FeatureBuilder(run_root=copy)  # control: a good signed run
    assert builder.definitions == FeatureDefinitions.from_dict(DEFINITIONS) and set(builder.features) == set(names)
    opened = ModelLoader(copy, prefer_onnx=False)  # signed, opened before the change (SeedPath runs native)
    assert opened.signed is not None and FeatureBuilder(loader=opened).features == builder.features

    path = copy / DEFINITIONS_FILE
    signed_text = path.read_text()
    path.write_text(signed_text.replace("rsi(close, 7)", "rsi(close, 9)"))
    hostile("signature", "feature definitions changed after signing: FeatureBuilder(run_root)")
    with pytest.raises(SignatureError, match=DEFINITIONS_FILE):
        FeatureBuilder(run_root=copy)
    for who, make in (
        ("FeatureBuilder(loader)", lambda: FeatureBuilder(loader=opened)),
        ("SeedPath(loader)", lambda: SeedPath(copy, loader=opened, families=["ridge"])),
    ):
        hostile("signature", f"feature definitions changed after the run was opened: {who}")
        with pytest.raises(SignatureError, match="changed since the run was opened") as info:
            make()
        assert Path(info.value.path).name == DEFINITIONS_FILE
    monkeypatch.undo()  # unsigned, but the lock recorded the definitions' sha256
    with pytest.raises(IntegrityError, match="differ from the ones the run was converted with"):
        FeatureBuilder(loader=ModelLoader(copy, strict_checksums=True))

    path.write_text(signed_text)
    meta = next(copy.glob("targets/*/models/*/family=ridge/model_meta.json"))
    meta.write_text(meta.read_text() + " ")
    hostile("signature", "model_meta.json changed after the run was opened: FeatureBuilder(loader)")
    with pytest.raises(SignatureError, match="changed since the run was opened") as info:
        FeatureBuilder(loader=opened)
    assert Path(info.value.path) == meta.resolve()
    with pytest.raises(FeatureBuildError, match="is not the loader's run"):
        FeatureBuilder(run_root=root, loader=opened)


def test_definitions_file_name_has_one_home():
    from fastinfer import signing
    from fastinfer.features import definitions

    assert signing.DEFINITIONS_FILE is definitions.DEFINITIONS_FILE
