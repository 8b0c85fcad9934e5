"""How the xgb16_* / xgb20_* / xgb21_* files were made: small XGBoost models saved by an older XGBoost as JSON /
UBJ, with rows (NaN, seen, unseen and negative category codes) and that XGBoost's own predictions on them in
X.reference.npz. Run in throw-away venvs, e.g. ``python -m venv /tmp/x16 && /tmp/x16/bin/pip install
xgboost==1.6.2 "numpy<2" scikit-learn pandas`` (likewise xgboost==2.0.3, xgboost-cpu==2.1.4), then
``/tmp/x16/bin/python made_by_xgboost.py OUT_DIR``. Only some of the files each version writes are kept."""

import json
import sys

import numpy as np
import pandas as pd
import xgboost as xgb

out, tag = sys.argv[1], "xgb" + xgb.__version__.replace(".", "")[:2]
rng = np.random.default_rng(11)
n, F = 400, 5


def frame(n):
    X = pd.DataFrame(rng.normal(size=(n, F)), columns=[f"f{i}" for i in range(F)])
    X["f1"] = rng.integers(0, 8, n)
    X["f3"] = rng.integers(0, 30, n)
    return X


def cat(X):
    X = X.copy()
    for c in ("f1", "f3"):
        X[c] = pd.Categorical(X[c], categories=range(int(X[c].max()) + 1 if c == "f1" else 30))
    return X


def probe(n=60):
    X = rng.normal(size=(n, F))
    X[:, 1] = rng.choice([*range(8), 8, 100, -1], n)
    X[:, 3] = rng.choice([*range(30), 31, -3], n)
    X[rng.random(X.shape) < 0.08] = np.nan
    return X


def save(name, booster, X, fmt, margin=False, categorical=False):
    path = f"{out}/{tag}_{name}.{fmt}"
    booster.save_model(path)
    d = xgb.DMatrix(
        X, feature_types=booster.feature_types, feature_names=booster.feature_names, enable_categorical=categorical
    )
    want = booster.predict(d, output_margin=margin)
    np.savez_compressed(f"{out}/{tag}_{name}.reference.npz", rows=X, want=want)
    print(tag, name, fmt, np.shape(want), json.loads(booster.save_config())["learner"]["objective"]["name"])


X = frame(n)
y = X["f0"] * 2 + (X["f1"] % 3) + rng.normal(size=n) * 0.1
P = probe()
base = dict(n_estimators=20, max_depth=4, learning_rate=0.3, tree_method="hist")
m = xgb.XGBRegressor(**base).fit(X.to_numpy(), y)
save("reg", m.get_booster(), P, "ubj")
m = xgb.XGBRegressor(**base, enable_categorical=True, max_cat_to_onehot=1).fit(cat(X), y)
save("reg_categorical", m.get_booster(), P, "json", categorical=True)
m = xgb.XGBRegressor(**base, enable_categorical=True, max_cat_to_onehot=16).fit(cat(X), y)
save("reg_categorical_onehot", m.get_booster(), P, "ubj", categorical=True)
yb = (y > y.median()).astype(int)
m = xgb.XGBClassifier(**base, enable_categorical=True, max_cat_to_onehot=1).fit(cat(X), yb)
save("binary_categorical", m.get_booster(), P, "ubj", categorical=True)
yk = pd.qcut(y, 4, labels=False)
m = xgb.XGBClassifier(**base).fit(X.to_numpy(), yk)
save("multiclass4", m.get_booster(), P, "ubj")
if xgb.__version__.startswith("2.0"):
    Y = np.column_stack([y, -y + X["f2"], X["f4"] ** 2])
    m = xgb.XGBRegressor(**base, multi_strategy="multi_output_tree").fit(X.to_numpy(), Y)
    save("multi_output_tree3", m.get_booster(), P, "json")
    m = xgb.XGBRegressor(**base, multi_strategy="one_output_per_tree").fit(X.to_numpy(), Y)
    save("one_output_per_tree3", m.get_booster(), P, "ubj")
    m = xgb.XGBRegressor(**base, objective="reg:quantileerror", quantile_alpha=np.array([0.1, 0.5, 0.9])).fit(
        X.to_numpy(), y
    )
    save("quantile3", m.get_booster(), P, "ubj")
if xgb.__version__.startswith("2.1"):  # written apart from the others, on its own rows
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    Y = np.column_stack([X[:, 0], X[:, 1], X[:, 2] ** 2])
    m = xgb.XGBRegressor(n_estimators=5, max_depth=3, tree_method="hist", multi_strategy="multi_output_tree").fit(X, Y)
    m.get_booster().save_model(f"{out}/xgb21_multi_output_tree3.json")
    np.savez_compressed(f"{out}/xgb21_multi_output_tree3.reference.npz", rows=X[:20], want=m.predict(X[:20]))
