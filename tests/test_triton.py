"""Triton model repository export and TritonPredictor.

Every config.pbtxt is parsed with Triton's own ModelConfig protobuf (from tritonclient); the
exported graphs' sha256 are checked against the lock and SHA256SUMS. TritonPredictor runs
against a real server where one can be started (FASTINFER_TRITON_URL, or ``tritonserver``
on PATH), else that test skips; its request building and response mapping are also tested
through ``LoopbackServer``: tritonclient's own HTTP request body, decoded as a KServe v2
server would, run in ONNX Runtime on the exported repository's files under their
config.pbtxt, answered with a v2 response body that tritonclient's own ``InferResult`` parses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient is the [serving] extra")

from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fastinfer.cli import main
from fastinfer.errors import ConfigError, InferenceError, IntegrityError, ModelLoadError, StateError
from fastinfer.features import ohlcv_arrays
from fastinfer.lock import LOCK_FILE, read_lock
from fastinfer.predictor import LivePredictor
from fastinfer.serving import INDEX_FILE, SUMS_FILE, TritonPredictor, export_triton

from .conftest import MARKET_TRAIN_BARS

DAILY = 1440.0
N_SYMBOLS = 8
MAX_BATCH = 3  # below N_SYMBOLS: requests are split by max_batch_size
NO_SERVER = (
    "no Triton server here (NOTES.md: pytriton's bundled tritonserver has no ONNX Runtime backend). "
    "Run one with the official container: docker run --rm -p8000:8000 -p8001:8001 "
    "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models "
    "--model-control-mode=explicit, then set FASTINFER_TRITON_URL=localhost:8000 "
    "(or put tritonserver on PATH)"
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, market_run):
    out = tmp_path_factory.mktemp("triton") / "repo"
    index = export_triton(market_run, out, max_batch_size=MAX_BATCH, max_queue_delay_us=250)
    return out, index


@pytest.fixture(scope="module")
def replay(market_run, goog):
    """(LivePredictor over 8 symbols after each bar: features, sequences, outputs) for 90 real bars."""
    predictor = LivePredictor(market_run, [f"S{i}" for i in range(N_SYMBOLS)], DAILY)
    frame = goog.iloc[MARKET_TRAIN_BARS : MARKET_TRAIN_BARS + 90]
    a = ohlcv_arrays(frame)
    scale = 1.0 + 0.1 * np.arange(N_SYMBOLS)
    steps = []
    for t in range(len(frame)):
        out = predictor.on_bar(
            *(a[k][t] * scale for k in ("open", "high", "low", "close", "volume")), timestamp=frame.index[t]
        )
        seqs = {T: predictor.plan.sequence_inputs[T].copy() for T in predictor.plan.sequence_inputs}
        steps.append(
            (predictor.features.out.copy(), seqs, out.copy(), [predictor.as_dict(s) for s in predictor.symbols])
        )
    return predictor, steps


def _configs(out: Path) -> dict[str, mc.ModelConfig]:
    return {
        d.name: text_format.Parse((d / "config.pbtxt").read_text(), mc.ModelConfig())
        for d in sorted(out.iterdir())
        if d.is_dir()
    }


class LoopbackServer:
    """Stands in for a Triton server on the HTTP/REST (KServe v2) protocol, over ONNX Runtime.

    It sees exactly the bytes tritonclient would send (``generate_request_body``), checks them
    against each model's parsed config.pbtxt as Triton does (input name, datatype, dims after
    the batch dimension, batch <= max_batch_size), runs ``1/model.onnx``, and answers with a
    binary v2 response parsed by tritonclient's ``InferResult.from_response_body``.
    """

    def __init__(self, repository: Path):
        import onnxruntime as ort

        self.configs = _configs(repository)
        self.sessions = {
            name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            for name in self.configs
        }
        self.requests: list[tuple[str, tuple[int, ...]]] = []

    def is_server_live(self) -> bool:
        return True

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return name in self.sessions

    def infer(self, model_name, inputs, outputs=None, **_):
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        header = json.loads(body[:json_size] if json_size else body)
        binary = body[json_size:] if json_size else b""
        cfg = self.configs.get(model_name)
        if cfg is None:
            raise InferenceServerException(f"Request for unknown model: '{model_name}' is not found")
        feeds, offset = {}, 0
        declared = {i.name: i for i in cfg.input}
        for tensor in header["inputs"]:
            spec = declared.get(tensor["name"])
            shape = tuple(tensor["shape"])
            if spec is None or tensor["datatype"] != "FP32" or mc.DataType.Name(spec.data_type) != "TYPE_FP32":
                raise InferenceServerException(f"unexpected input {tensor['name']!r} {tensor['datatype']}")
            if shape[1:] != tuple(spec.dims) or not 1 <= shape[0] <= cfg.max_batch_size:
                raise InferenceServerException(
                    f"[request id: <id_unknown>] unexpected shape for input "
                    f"'{spec.name}' for model '{model_name}'. Expected "
                    f"[-1,{','.join(map(str, spec.dims))}], got {list(shape)}"
                )
            size = tensor["parameters"]["binary_data_size"]
            feeds[spec.name] = np.frombuffer(binary[offset : offset + size], dtype=np.float32).reshape(shape)
            offset += size
        self.requests.append((model_name, shape))
        wanted = [o["name"] for o in header["outputs"]] if "outputs" in header else [o.name for o in cfg.output]
        results = self.sessions[model_name].run(wanted, feeds)
        response = {"model_name": model_name, "model_version": "1", "outputs": []}
        blobs = []
        for name, value in zip(wanted, results):
            value = np.ascontiguousarray(value, dtype=np.float32)
            assert list(value.shape[1:]) == list(next(o.dims for o in cfg.output if o.name == name))
            response["outputs"].append(
                {
                    "name": name,
                    "datatype": "FP32",
                    "shape": list(value.shape),
                    "parameters": {"binary_data_size": value.nbytes},
                }
            )
            blobs.append(value.tobytes())
        head = json.dumps(response).encode()
        return httpclient.InferResult.from_response_body(head + b"".join(blobs), header_length=len(head))


# ---------------------------------------------------------------- the repository


def test_every_config_parses_with_tritons_protobuf(repo, market_run):
    out, index = repo
    lock = read_lock(market_run)
    configs = _configs(out)
    onnx_entries = [e for e in lock.entries if e.status == "onnx"]
    assert set(configs) == set(index["models"])
    assert len(configs) == len(onnx_entries) + 2  # every graph, plus fused-tabular and fused-seq10
    assert {"fused-tabular", "fused-seq10"} <= set(configs)
    for name, cfg in configs.items():
        assert cfg.name == name and cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size == MAX_BATCH
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
        assert (out / name / "1" / "model.onnx").is_file()
        assert [i.name for i in cfg.input] == ["features"]
        assert cfg.input[0].data_type == mc.TYPE_FP32 and all(o.data_type == mc.TYPE_FP32 for o in cfg.output)
        # Dims as in the graph, batch dimension left out.
        import onnx

        graph = onnx.load(str(out / name / "1" / "model.onnx"))
        in_dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
        assert list(cfg.input[0].dims) == in_dims[1:] and in_dims[0] == 0  # 0: symbolic batch
        for o, g in zip(cfg.output, graph.graph.output):
            assert o.name == g.name and list(o.dims) == [d.dim_value for d in g.type.tensor_type.shape.dim][1:]
    for e in onnx_entries:  # per-model folders carry the lock's I/O
        model = next(
            m
            for m in index["models"].values()
            if m["kind"] == "model" and (m["outputs"][0]["target"], m["outputs"][0]["family"]) == (e.target, e.family)
        )
        assert model["input"]["dims"] == e.input["shape"][1:]
        assert model["outputs"][0]["columns"] == e.output["columns"]
    assert list(configs["fused-seq10"].input[0].dims) == [10, len(index["union"])]


def test_graph_sha256_match_the_lock_and_the_sums_file(repo, market_run):
    out, index = repo
    lock = read_lock(market_run)
    by_key = {(e.target, e.family): e for e in lock.entries if e.status == "onnx"}
    per_model = 0
    for name, model in index["models"].items():
        data = (out / name / "1" / "model.onnx").read_bytes()
        assert hashlib.sha256(data).hexdigest() == model["sha256"]
        if model["kind"] == "model":
            o = model["outputs"][0]
            assert model["sha256"] == by_key[(o["target"], o["family"])].onnx_sha256
            per_model += 1
    assert per_model == len(by_key)
    sums = dict(reversed(line.split("  ", 1)) for line in (out / SUMS_FILE).read_text().splitlines())
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {SUMS_FILE}
    assert set(sums) == written
    for rel, digest in sums.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel


def test_fused_outputs_are_the_live_predictors_columns(repo, replay):
    _out, index = repo
    predictor, _ = replay
    assert [tuple(c) for c in index["columns"]] == predictor.columns
    assert index["union"] == predictor.union
    fused_outputs = [o["name"] for n in ("fused-tabular", "fused-seq10") for o in index["models"][n]["outputs"]]
    assert sorted(fused_outputs) == sorted({f"{t}/{f}" for t, f, _ in predictor.columns})


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-model"])
def test_triton_predictor_equals_the_live_predictor(repo, replay, market_run, tmp_path, fused):
    out, index = repo
    if not fused:
        out = tmp_path / "per_model"
        index = export_triton(market_run, out, max_batch_size=MAX_BATCH, fused=False)
        assert not any(m["kind"] == "fused" for m in index["models"].values())
    predictor, steps = replay
    server = LoopbackServer(out)
    client = TritonPredictor("loopback:8000", out, client=server)
    assert client.is_ready() and client.feature_order == predictor.union
    compared = 0
    for t, (feats, seqs, live_out, live_dicts) in enumerate(steps):
        got = client.infer(feats, seqs)
        assert got.shape == live_out.shape
        # Sequence models: the live predictor also waits for seq_warmup_bars; compare where both serve.
        both = ~np.isnan(live_out)
        assert np.array_equal(got[both], live_out[both]), t
        tabular = [j for j, (tg, f, _) in enumerate(predictor.columns) if f != "lstm"]
        assert np.array_equal(got[:, tabular], live_out[:, tabular], equal_nan=True), t
        compared += int(both.sum())
        if t == len(steps) - 1:
            assert client.predict(feats, seqs) == live_dicts
    assert not np.isnan(live_out).any() and compared > 20 * live_out.size  # warmed up: every model served
    n_requests = -(-N_SYMBOLS // MAX_BATCH)  # ceil: split by max_batch_size
    assert len(server.requests) == (len(steps) + 1) * len(index["serve"]) * n_requests  # + the predict call
    assert max(shape[0] for _, shape in server.requests) == MAX_BATCH


def test_triton_predictor_refuses_bad_inputs(repo, replay):
    out, _ = repo
    _, steps = replay
    feats, seqs, _, _ = steps[-1]
    client = TritonPredictor("loopback:8000", out, client=LoopbackServer(out))
    with pytest.raises(InferenceError, match=r"sequences\[10\] missing.*lstm"):
        client.infer(feats)
    with pytest.raises(InferenceError, match="features: expected"):
        client.infer(feats[:, :-1], seqs)
    with pytest.raises(InferenceError, match=r"sequences\[10\]: expected shape"):
        client.infer(feats, {10: seqs[10][:, 1:]})
    with pytest.raises(ConfigError, match="protocol"):
        TritonPredictor("x:1", out, protocol="websocket")
    with pytest.raises(StateError, match="no such file"):
        TritonPredictor("x:1", out / "nowhere")


def test_missing_tritonclient_names_the_extra(repo, monkeypatch):
    out, _ = repo
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"fastinfer\[serving\]"):
        TritonPredictor("localhost:8001", out, protocol="grpc")


def test_grpc_protocol_builds_a_grpc_client(repo):
    import tritonclient.grpc as grpcclient

    out, _ = repo
    client = TritonPredictor("localhost:1", out, protocol="grpc")  # the channel connects lazily
    assert isinstance(client.client, grpcclient.InferenceServerClient)


# ---------------------------------------------------------------- options and bad input


def test_gpu_instances_and_re_export(repo, market_run, tmp_path):
    out = tmp_path / "gpu"
    index = export_triton(
        market_run,
        out,
        instance_kind="gpu",
        max_batch_size=64,
        max_queue_delay_us=0,
        instance_count=2,
        name_prefix="runA-",
    )
    configs = _configs(out)
    assert all(n.startswith("runA-") for n in configs)
    for cfg in configs.values():
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
        assert cfg.HasField("dynamic_batching") and cfg.max_batch_size == 64
    # Exporting again over a previous export replaces its model folders only.
    (out / "notes.txt").write_text("kept")
    export_triton(market_run, out, fused=False, name_prefix="runA-")
    assert not (out / "runA-fused-tabular").exists() and (out / "notes.txt").read_text() == "kept"
    assert set(_configs(out)) == {n for n, m in index["models"].items() if m["kind"] == "model"}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    with pytest.raises(StateError, match="not a fastinfer Triton export"):
        export_triton(market_run, foreign)
    for bad in ({"instance_kind": "tpu"}, {"max_batch_size": 0}, {"max_queue_delay_us": -1}, {"name_prefix": "a/b"}):
        with pytest.raises(ConfigError):
            export_triton(market_run, tmp_path / "never", **bad)
    assert not (tmp_path / "never").exists()


@pytest.fixture
def market_copy(tmp_path, market_run):
    dest = tmp_path / "run" / market_run.name
    shutil.copytree(market_run, dest)
    return dest


def test_missing_lock_is_a_typed_error(market_copy, tmp_path):
    (market_copy / LOCK_FILE).unlink()
    with pytest.raises(ModelLoadError, match="fastinfer convert") as info:
        export_triton(market_copy, tmp_path / "out")
    assert info.value.path.endswith(LOCK_FILE)


def test_tampered_graph_is_refused_naming_the_file(market_copy, tmp_path):
    entry = next(e for e in read_lock(market_copy).entries if e.status == "onnx")
    graph = market_copy / entry.onnx_file
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 differs from the lock") as info:
        export_triton(market_copy, tmp_path / "out")
    assert (info.value.path, info.value.target, info.value.family) == (str(graph), entry.target, entry.family)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_export_triton(market_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        main,
        [
            "export-triton",
            str(market_run),
            str(out),
            "--gpu",
            "--max-batch-size",
            "16",
            "--max-queue-delay-us",
            "500",
            "--no-fused",
        ],
    )
    assert result.exit_code == 0, result.output
    configs = _configs(out)
    assert configs and not any(n.startswith("fused") for n in configs)
    assert all(
        c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        and c.max_batch_size == 16
        and c.dynamic_batching.max_queue_delay_microseconds == 500
        for c in configs.values()
    )
    assert (out / INDEX_FILE).is_file() and f"{len(configs)} model(s)" in result.output
    bad = runner.invoke(main, ["export-triton", str(tmp_path / "nowhere"), str(tmp_path / "o2")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and len(bad.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- a real server, where one can run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def triton_server(repo):
    """(url, how) of a running Triton with the repository loaded, or skip with the reason."""
    import tritonclient.http as httpclient

    out, index = repo
    url = os.environ.get("FASTINFER_TRITON_URL")
    if url:  # a server in explicit model-control mode: push the exported models to it
        client = httpclient.InferenceServerClient(url=url)
        from google.protobuf import json_format

        for name in index["models"]:
            config = json_format.MessageToJson(_configs(out)[name], preserving_proto_field_name=True)
            graph = (out / name / "1" / "model.onnx").read_bytes()
            client.load_model(name, config=config, files={"file:1/model.onnx": graph})
        yield url
        return
    binary = shutil.which("tritonserver")
    if binary is None:
        pytest.skip(NO_SERVER)
    http_port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--model-repository={out}",
            f"--http-port={http_port}",
            f"--grpc-port={_free_port()}",
            f"--metrics-port={_free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"127.0.0.1:{http_port}"
    try:
        client = httpclient.InferenceServerClient(url=url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if client.is_server_ready():
                    break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        else:
            proc.kill()
            log = proc.stdout.read()[-600:] if proc.stdout else ""
            pytest.skip(f"tritonserver on PATH did not become ready with this repository ({log!r}); {NO_SERVER}")
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_triton_predictor_against_a_real_server(triton_server, repo, replay):
    out, _ = repo
    _predictor, steps = replay
    feats, seqs, live_out, _live_dicts = steps[-1]
    client = TritonPredictor(triton_server, out)
    assert client.is_ready()
    got = client.infer(feats, seqs)
    both = ~np.isnan(live_out)
    # Another ONNX Runtime build may round differently: close, not bit-equal.
    np.testing.assert_allclose(got[both], live_out[both], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- signed runs and input names


def test_signed_export_checks_graphs_against_the_signed_lock(market_copy, tmp_path, monkeypatch):
    """In a signed run the graphs are checked against the lock the signature covers, never a
    lock read beside it. Here a writer races the export: the lock on disk points a model at an
    unsigned graph when the export starts, and is put back before the signature is checked."""
    import dataclasses

    from fastinfer import signing
    from fastinfer.config import Settings

    private, public = signing.generate_keypair(tmp_path / "k")
    signing.sign_run(market_copy, private)
    settings = Settings()
    settings = dataclasses.replace(
        settings, models=dataclasses.replace(settings.models, verify_signature=True, trusted_public_key=str(public))
    )
    index = export_triton(market_copy, tmp_path / "good", settings=settings, fused=False)  # control
    signed = {e.key: e for e in read_lock(market_copy).entries if e.status == "onnx"}
    entry = next(iter(signed.values()))
    name = next(n for n, m in index["models"].items() if m["sha256"] == entry.onnx_sha256)

    good_lock = (market_copy / LOCK_FILE).read_bytes()
    graph = market_copy / entry.onnx_file
    evil = graph.with_name("evil.onnx")  # an unsigned file in the run: nothing should read it
    evil.write_bytes(graph.read_bytes() + b"\0")  # a trailing zero byte: still a loadable graph
    lock = json.loads(good_lock)
    for e in lock["entries"]:
        if (e["target"], e["family"]) == (entry.target, entry.family):
            e["onnx_file"] = str(Path(entry.onnx_file).with_name("evil.onnx"))
            e["onnx_sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    (market_copy / LOCK_FILE).write_text(json.dumps(lock))
    real_verify = signing.verify_run

    def racing_verify(root, key):
        (market_copy / LOCK_FILE).write_bytes(good_lock)  # put back just before the check
        return real_verify(root, key)

    monkeypatch.setattr(signing, "verify_run", racing_verify)
    index = export_triton(market_copy, tmp_path / "raced", settings=settings, fused=False)
    exported = (tmp_path / "raced" / name / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(exported).hexdigest() == entry.onnx_sha256 == index["models"][name]["sha256"]
    assert exported == graph.read_bytes()


def test_input_name_comes_from_the_lock_and_must_match_the_graph(repo, market_copy, tmp_path):
    import onnx

    out, index = repo
    configs = _configs(out)
    for name, model in index["models"].items():  # control: config, index and graph agree
        graph_input = onnx.load(out / name / "1" / "model.onnx").graph.input[0].name
        assert configs[name].input[0].name == model["input"]["name"] == graph_input
    data = json.loads((market_copy / LOCK_FILE).read_text())
    entry = next(e for e in data["entries"] if e["status"] == "onnx")
    entry["input"]["name"] = "x"
    (market_copy / LOCK_FILE).write_text(json.dumps(data))
    with pytest.raises(StateError, match="graph input 'features' disagrees with the lock's input name 'x'"):
        export_triton(market_copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_triton_predictor_sends_the_exported_input_name(repo, replay, tmp_path):
    """A repository whose graphs read input ``x``: the client names the input as the index says."""
    import onnx

    out, _ = repo
    renamed = tmp_path / "renamed"
    shutil.copytree(out, renamed)
    index = json.loads((renamed / INDEX_FILE).read_text())
    for name, model in index["models"].items():
        graph = onnx.load(renamed / name / "1" / "model.onnx")
        old = graph.graph.input[0].name
        graph.graph.input[0].name = "x"
        for node in graph.graph.node:
            node.input[:] = ["x" if i == old else i for i in node.input]
        onnx.save(graph, renamed / name / "1" / "model.onnx")
        cfg = _configs(renamed)[name]
        cfg.input[0].name = "x"
        (renamed / name / "config.pbtxt").write_text(text_format.MessageToString(cfg))
        model["input"]["name"] = "x"
    (renamed / INDEX_FILE).write_text(json.dumps(index))
    _, steps = replay
    feats, seqs, _, _ = steps[-1]
    want = TritonPredictor("loopback:8000", out, client=LoopbackServer(out)).infer(feats, seqs)  # control
    got = TritonPredictor("loopback:8000", renamed, client=LoopbackServer(renamed)).infer(feats, seqs)
    np.testing.assert_array_equal(got, want)
