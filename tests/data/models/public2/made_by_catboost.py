"""How the catboost122_* files were made: small CatBoost models saved by CatBoost 1.2.2 (.cbm), with rows
(NaN, seen / unseen / negative codes in
categorical columns, passed as CatBoost reads int categories: their text) and CatBoost 1.2.2's predictions
in X.reference.npz. Run in a throw-away venv: ``python -m venv /tmp/cb12 && /tmp/cb12/bin/pip install
catboost==1.2.2 "numpy<2" pandas``, then ``/tmp/cb12/bin/python made_by_catboost.py OUT_DIR``."""

import sys

import catboost as cb
import numpy as np
import pandas as pd

out = sys.argv[1]
rng = np.random.default_rng(5)
n, F = 400, 5
X = rng.normal(size=(n, F))
X[rng.random(X.shape) < 0.05] = np.nan
X[:, 2] = rng.integers(0, 6, n)
y = np.nan_to_num(X[:, 0]) * 2 + (X[:, 2] % 3) + rng.normal(size=n) * 0.1
P = rng.normal(size=(60, F))
P[rng.random(P.shape) < 0.08] = np.nan
P[:, 2] = rng.choice([*range(6), 6, 50, -1], 60)


def data(A, cats, label=None):
    if not cats:
        return A
    D = pd.DataFrame(A).astype(object)
    for c in cats:
        D[c] = ["nan" if v != v else str(int(v)) for v in A[:, c]]
    return cb.Pool(D, label=label, cat_features=cats)


def save(name, model, cats, ptype):
    model.save_model(f"{out}/catboost122_{name}.cbm")
    want = np.asarray(model.predict(data(P, cats), prediction_type=ptype), float)
    np.savez_compressed(f"{out}/catboost122_{name}.reference.npz", rows=P, want=want)
    print(name, model.get_all_params()["loss_function"], cats)


kw = dict(iterations=30, depth=4, verbose=0, random_seed=0, allow_writing_files=False, thread_count=1)
m = cb.CatBoostRegressor(**kw).fit(X, y)
save("rmse", m, [], "RawFormulaVal")
m = cb.CatBoostRegressor(**kw).fit(data(X, [2], y))
save("rmse_categorical", m, [2], "RawFormulaVal")
m = cb.CatBoostRegressor(**kw, loss_function="Poisson").fit(X, np.round(np.exp(y / 3)))
save("poisson", m, [], "Exponent")
m = cb.CatBoostClassifier(**kw, nan_mode="Max").fit(X, (y > np.median(y)).astype(int))
save("logloss_nan_max", m, [], "Probability")
m = cb.CatBoostClassifier(**kw, loss_function="MultiClass").fit(
    data(X, [2], np.digitize(y, np.quantile(y, [0.33, 0.66])))
)
save("multiclass_categorical", m, [2], "Probability")
m = cb.CatBoostRegressor(**kw, loss_function="MultiRMSE").fit(X, np.column_stack([y, -y]))
save("multirmse2", m, [], "RawFormulaVal")
m = cb.CatBoostClassifier(**kw, loss_function="MultiClassOneVsAll").fit(X, np.digitize(y, np.quantile(y, [0.33, 0.66])))
save("multiclass_one_vs_all", m, [], "Probability")
