"""How the tfkeras215_* files were made: small Keras 2 (tf.keras, TensorFlow 2.15) models saved as .h5 (and two
as Keras 2's .keras, named *_keras2format), each with the rows it was given and tf.keras's own predictions on
them in X.reference.npz. Run with TensorFlow 2.15 in a throw-away venv:
``python -m venv /tmp/k2 && /tmp/k2/bin/pip install "tensorflow-cpu==2.15.*" h5py``, then
``/tmp/k2/bin/python made_by_keras2.py OUT_DIR``."""

import sys

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers as L

out = sys.argv[1]
tf.keras.utils.set_random_seed(7)
rng = np.random.default_rng(7)
F, T = 6, 12


def fit(model, X, k):
    y = rng.normal(size=(len(X), k)).astype("float32")
    model.compile("adam", "mse")
    model.fit(X, y, epochs=3, batch_size=32, verbose=0)  # moves BatchNormalization's moving stats off 0/1


def save(name, model, X, fmt="h5"):
    stem = name if fmt == "h5" else f"{name}_keras2format"
    path = f"{out}/{stem}.{fmt}"
    model.save(path, include_optimizer=False) if fmt == "h5" else model.save(path)
    np.savez_compressed(f"{out}/{stem}.reference.npz", rows=X[:40], want=model.predict(X[:40], verbose=0))
    print(name, fmt, model.input_shape, "->", model.output_shape)


X2 = rng.normal(size=(256, F)).astype("float32") * 2 + 1
X3 = rng.normal(size=(256, T, F)).astype("float32")

m = keras.Sequential(
    [
        L.Input((F,)),
        L.Dense(16, activation="relu"),
        L.BatchNormalization(),
        L.Dropout(0.3),
        L.Dense(8, activation="tanh"),
        L.Dense(1),
    ],
    name="mlp_seq",
)
fit(m, X2, 1)
save("tfkeras215_mlp_sequential", m, X2)
save("tfkeras215_mlp_sequential", m, X2, "keras")

i = L.Input((F,))
h = L.Dense(12, activation="elu")(i)
h2 = L.Dense(12, activation="relu")(i)
o = L.Dense(3, activation="softmax")(L.Concatenate()([h, h2]))
m = keras.Model(i, o, name="mlp_functional_softmax")
fit(m, X2, 3)
save("tfkeras215_mlp_functional_softmax3", m, X2)

m = keras.Sequential(
    [
        L.Input((T, F)),
        L.Conv1D(8, 3, padding="causal", activation="relu"),
        L.BatchNormalization(),
        L.Conv1D(8, 3, dilation_rate=2, padding="same"),
        L.GlobalAveragePooling1D(),
        L.Dense(1),
    ],
    name="cnn1d",
)
fit(m, X3, 1)
save("tfkeras215_conv1d_bn", m, X3)

m = keras.Sequential(
    [L.Input((T, F)), L.LSTM(8, return_sequences=True), L.Dropout(0.2), L.LSTM(6), L.Dense(1)], name="lstm"
)
fit(m, X3, 1)
save("tfkeras215_lstm_stacked", m, X3)
save("tfkeras215_lstm_stacked", m, X3, "keras")

i = L.Input((T, F))
o = L.Dense(2)(L.GRU(8)(i))
m = keras.Model(i, o, name="gru")
fit(m, X3, 2)
save("tfkeras215_gru_functional", m, X3)

i = L.Input((T, F))
o = L.Dense(1)(L.GRU(8, reset_after=False)(i))
m = keras.Model(i, o, name="gru_v1")
fit(m, X3, 1)
save("tfkeras215_gru_reset_after_false", m, X3)

m = keras.Sequential(
    [L.Input((T, F)), L.Bidirectional(L.LSTM(6, return_sequences=True)), L.Bidirectional(L.GRU(4)), L.Dense(1)],
    name="bidir",
)
fit(m, X3, 1)
save("tfkeras215_bidirectional_lstm_gru", m, X3)

i = L.Input((T, F))
x = L.Dense(8)(i)
a = L.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
x = L.LayerNormalization()(L.Add()([x, a]))
o = L.Dense(1)(L.GlobalAveragePooling1D()(x))
m = keras.Model(i, o, name="mha")
fit(m, X3, 1)
save("tfkeras215_multihead_attention", m, X3)

i = L.Input((T, F))
q = L.Dense(8)(i)
a = L.Attention()([q, q])
o = L.Dense(1)(L.GlobalMaxPooling1D()(a))
m = keras.Model(i, o, name="dot_attention")
fit(m, X3, 1)
save("tfkeras215_dot_attention", m, X3)
