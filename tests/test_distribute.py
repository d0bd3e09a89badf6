"""Precision policies, the float32 model that ships, and data-parallel training on two virtual CPU devices.

The two-device runs happen in a subprocess (this file run as a script): TensorFlow's logical devices must be
set before TensorFlow starts, and JAX reads XLA_FLAGS when it starts.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import distribute  # noqa: E402
from backbone import AgeMAE, age_distribution_loss, build_model  # noqa: E402
from utils import UserError  # noqa: E402

IMAGE_SIZE, WIDTH = 32, 8
BATCH_SIZE = 8
STEPS = 4
LEARNING_RATE = 3e-3  # train.py's peak rate
# Two replicas against one device run the same arithmetic summed in another order: only float32 rounding
# (~1e-7 relative) may differ, and it grows a little over the steps. Measured on this CPU (4 steps):
# losses agree to 1e-7 relative and the weights to 3e-6 (1.5e-6 of how far training moved them), on both
# backends. A replica stepping on its own half-batch gradient instead ends 41% (relative) and 0.05 off.
LOSS_TOLERANCE = 1e-5  # relative, on each step's training loss
RELATIVE_WEIGHT_TOLERANCE = 1e-4  # |parallel - single| / |single - initial|, over all weights
# AdamW moves a weight by about the learning rate per step whatever the gradient's size, so rounding can
# flip the step of a weight whose gradient is ~0: no single weight may differ by a tenth of one step.
WEIGHT_TOLERANCE = LEARNING_RATE / 10


class SyntheticFaces(keras.utils.PyDataset):
    """Fixed random faces and labels. Each batch's images are one half repeated twice (its labels are all
    different), so a replica's half-batch has exactly the batch-norm mean and variance of the whole batch:
    per-replica statistics (MirroredStrategy) then equal single-device ones, while each replica's gradient
    still differs and only their average gives the single-device step."""

    def __init__(self, steps: int = STEPS, batch_size: int = BATCH_SIZE, shard: tuple[int, int] = (0, 1)):
        super().__init__()
        self.steps, self.batch_size, self.shard = steps, batch_size, shard

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        rng = np.random.default_rng(index)
        images = rng.uniform(0, 255, (self.batch_size // 2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
        ages = rng.integers(0, 101, self.batch_size).astype(np.float32)
        genders = rng.integers(0, 2, (self.batch_size, 1)).astype(np.float32)
        index, count = self.shard  # a process's part of the global batch (several JAX processes)
        part = slice(index * self.batch_size // count, (index + 1) * self.batch_size // count)
        return np.concatenate([images] * 2)[part], {"age": ages[part], "gender": genders[part]}


def compiled_model(initial_weights=None) -> keras.Model:
    """train.py's model and compile call, without dropout (its masks are drawn per replica)."""
    model = build_model(IMAGE_SIZE, WIDTH, dropout=0.0)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    model.compile(
        optimizer=keras.optimizers.AdamW(LEARNING_RATE, weight_decay=1e-4),
        loss={"age": age_distribution_loss, "gender": keras.losses.BinaryCrossentropy(label_smoothing=0.05)},
        loss_weights={"age": 1.0, "gender": 2.0},
        metrics={"age": [AgeMAE()], "gender": [keras.metrics.BinaryAccuracy(name="accuracy")]},
    )
    return model


def train(strategy: str, initial_weights=None, shard: tuple[int, int] = (0, 1)) -> dict:
    """A few steps under strategy_scope, the way train.py runs them: replicas, per-step losses, weights."""
    losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    with distribute.strategy_scope(strategy) as replica_count, distribute.precision_scope("auto"):
        distribute.check_batch_size(BATCH_SIZE, replica_count)
        model = compiled_model(initial_weights)
        initial = [np.asarray(weight) for weight in model.get_weights()]
        model.fit(SyntheticFaces(shard=shard), epochs=1, shuffle=False, verbose=0, callbacks=[record])
    return {"replicas": replica_count, "losses": losses, "initial": initial,
            "final": [np.asarray(weight) for weight in model.get_weights()]}


def compare(single: dict, parallel: dict) -> dict:
    def norm(pairs) -> float:
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs)))

    return {
        "replicas": parallel["replicas"],
        "single_losses": single["losses"],
        "parallel_losses": parallel["losses"],
        "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(single["final"], parallel["final"])),
        "max_weight_change": max(float(np.abs(a - b).max()) for a, b in zip(single["final"], single["initial"])),
        "relative_difference": norm(zip(single["final"], parallel["final"]))
        / norm(zip(single["final"], single["initial"])),
    }


def compare_parallel_with_single(strategy: str) -> dict:
    """Subprocess body: one device, then `strategy` over both, from the same initial weights."""
    keras.utils.set_random_seed(0)
    single = train("none")
    report = compare(single, train(strategy, single["initial"]))
    report.update(auto_strategy=distribute.resolve_strategy("auto"),
                  auto_precision=distribute.resolve_precision("auto"), refusals=refusals())
    return report


def refusals() -> dict:
    """The one-line errors for strategies this backend cannot run."""
    messages = {}
    for strategy in ("mirrored", "data-parallel", "multi-worker"):
        try:
            with distribute.strategy_scope(strategy):
                pass
        except UserError as error:
            messages[strategy] = str(error)
    return messages


def run_two_devices(backend: str, *arguments: str) -> tuple[dict, float]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("TF_CONFIG", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, __file__, *arguments], env=env, capture_output=True, text=True,
                            timeout=180, cwd=ROOT)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), elapsed


def assert_matches_single_device(report: dict) -> None:
    assert report["replicas"] == 2
    assert len(report["parallel_losses"]) == len(report["single_losses"]) == STEPS
    np.testing.assert_allclose(report["parallel_losses"], report["single_losses"], rtol=LOSS_TOLERANCE)
    assert report["max_weight_change"] > 10 * LEARNING_RATE  # training really moved the weights
    assert report["relative_difference"] < RELATIVE_WEIGHT_TOLERANCE, report
    assert report["max_weight_difference"] < WEIGHT_TOLERANCE, report


def test_mirrored_strategy_on_two_tensorflow_devices_matches_one_device():
    report, elapsed = run_two_devices("tensorflow", "mirrored")
    print(f"tensorflow mirrored: {elapsed:.1f} s, max weight difference {report['max_weight_difference']:.2g}")
    assert_matches_single_device(report)
    assert report["auto_strategy"] == "none"  # two CPU devices are not worth mirroring; GPUs would be
    assert report["auto_precision"] == "float32"
    assert "KERAS_BACKEND=jax" in report["refusals"]["data-parallel"]
    assert "keras#20585" in report["refusals"]["multi-worker"]


@pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="jax is not installed")
def test_data_parallel_on_two_jax_devices_matches_one_device():
    report, elapsed = run_two_devices("jax", "data-parallel")
    print(f"jax data-parallel: {elapsed:.1f} s, max weight difference {report['max_weight_difference']:.2g}")
    assert_matches_single_device(report)
    assert report["auto_strategy"] == "data-parallel"
    assert report["auto_precision"] == "float32"
    assert "KERAS_BACKEND=tensorflow" in report["refusals"]["mirrored"]
    assert "keras#20585" in report["refusals"]["multi-worker"]


@pytest.mark.parametrize("backend, strategy", [("tensorflow", "mirrored"), ("jax", "data-parallel")])
def test_train_py_runs_on_two_devices(backend, strategy, tmp_path):
    """train.py end to end over two devices: odd batch sizes and unreadable rows included (JAX needs
    every batch divisible by its devices), a float32 model.keras, and a card that says what ran."""
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    from test_training import synthetic_table

    synthetic_table(tmp_path, count=41)
    (tmp_path / "5.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    report, _ = run_two_devices(backend, "train-py", str(tmp_path / "cache.csv"), str(tmp_path), str(out), strategy)
    assert report["exit"] == 0 and report["replicas"] == 2
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["arguments"]["strategy"] == strategy and card["training"]["backend"] == backend
    assert {str(weight.dtype) for weight in keras.models.load_model(out / "model.keras", compile=False).weights} \
        == {"float32"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_jax_processes(*arguments_of_process) -> float:
    """Run this file as a script in two processes on this machine, one CPU device each, joined as two
    machines would be; arguments_of_process(index) gives each its arguments. Returns the seconds taken."""
    coordinator = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    processes = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", KERAS_DISTRIBUTION_JOB_ADDRESSES=coordinator,
                   KERAS_DISTRIBUTION_NUM_PROCESSES="2", KERAS_DISTRIBUTION_PROCESS_ID=str(index))
        env.pop("XLA_FLAGS", None)
        processes.append(subprocess.Popen([sys.executable, __file__, *arguments_of_process[index]], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        errors = [process.communicate(timeout=600)[1] for process in processes]  # a loaded 2-core machine
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    return time.monotonic() - started


@pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="jax is not installed")
def test_data_parallel_over_two_jax_processes_matches_one_device(tmp_path):
    elapsed = run_two_jax_processes(*[["multi-process", str(tmp_path / f"{index}.json")] for index in range(2)])
    print(f"jax two processes: {elapsed:.1f} s")
    report = json.loads((tmp_path / "0.json").read_text())
    assert report["shard"] == [0, 2] and json.loads((tmp_path / "1.json").read_text())["shard"] == [1, 2]
    assert_matches_single_device(report)


@pytest.mark.skipif(not importlib.util.find_spec("jax"), reason="jax is not installed")
def test_only_the_first_of_two_jax_processes_writes_the_run_folder(tmp_path):
    """train.py in two processes, each given its own --out as two machines without a shared disk would
    see one: process 0's folder holds the whole run, process 1's is never created."""
    from test_training import synthetic_table

    synthetic_table(tmp_path, count=80)  # enough for every split to give both processes faces
    outs = [tmp_path / f"run{index}" for index in range(2)]
    elapsed = run_two_jax_processes(*[["train-py-process", str(tmp_path / "cache.csv"), str(tmp_path), str(out)]
                                      for out in outs])
    print(f"train.py on two jax processes: {elapsed:.1f} s")
    written = {path.name for path in outs[0].iterdir()}
    assert {"model.keras", "last.keras", "model.json", "split.csv", "run.json", "log.csv", "curves.png"} <= written
    assert not outs[1].exists()


def test_refusals_on_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="KERAS_BACKEND=jax"):
        distribute.resolve_strategy("data-parallel")
    with pytest.raises(UserError, match="keras-team/keras#20585"):
        distribute.resolve_strategy("multi-worker")
    two_workers = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(two_workers))
    with pytest.raises(UserError, match="KERAS_BACKEND=jax --strategy data-parallel"):
        distribute.resolve_strategy("auto")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not valid"):
        distribute.resolve_strategy("auto")
    with pytest.raises(UserError, match="unknown strategy"):
        distribute.resolve_strategy("horovod")
    with pytest.raises(UserError, match="unknown precision"):
        distribute.resolve_precision("float8")
    with pytest.raises(UserError, match="use a multiple of 4"):
        distribute.check_batch_size(30, 4)
    distribute.check_batch_size(32, 4)
    assert distribute.replicas() == 1 and distribute.data_shard() == (0, 1)


def test_precision_scope_sets_and_always_restores_the_global_policy():
    assert distribute.resolve_precision("auto") == "float32"  # this CPU
    before = keras.mixed_precision.global_policy().name
    with distribute.precision_scope("mixed_bfloat16") as policy_name:
        assert policy_name == keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert keras.layers.Dense(2).dtype_policy.compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == before
    with pytest.raises(RuntimeError), distribute.precision_scope("mixed_float16"):
        raise RuntimeError("a failed build")
    assert keras.mixed_precision.global_policy().name == before


@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_model_converts_to_float32_and_exports_float_onnx(policy_name, tmp_path):
    import onnx
    import onnxruntime

    keras.utils.set_random_seed(1)
    with distribute.precision_scope(policy_name):
        mixed = compiled_model()
    mixed.fit(SyntheticFaces(steps=1), epochs=1, verbose=0)  # the trained state train.py would save
    converted = float32_model_roundtrip(mixed, tmp_path / "model.keras")

    assert all(layer.dtype_policy.name == "float32" for layer in converted.layers)
    assert all(weight.dtype == np.float32 for weight in converted.get_weights())
    for trained, shipped in zip(mixed.get_weights(), converted.get_weights()):
        np.testing.assert_array_equal(trained, shipped)
    faces = np.random.default_rng(2).uniform(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    expected = {name: np.asarray(value) for name, value in converted.predict_on_batch(faces).items()}
    mixed_outputs = mixed.predict_on_batch(faces)
    for name in ("age", "gender"):
        np.testing.assert_allclose(np.asarray(mixed_outputs[name], np.float32), expected[name], atol=1e-2)

    onnx_path = tmp_path / "model.onnx"
    converted.export(str(onnx_path), format="onnx", verbose=False)
    graph = onnx.load(str(onnx_path)).graph
    # weights and constants are float32; the only other initialisers are int64 shapes and axes
    initialiser_types = {tensor.data_type for tensor in graph.initializer}
    assert onnx.TensorProto.FLOAT in initialiser_types
    assert not initialiser_types & {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    cast_targets = {attribute.i for node in graph.node if node.op_type == "Cast" for attribute in node.attribute
                    if attribute.name == "to"}
    assert not cast_targets & {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: faces})))
    for name in ("age", "gender"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-3)


def float32_model_roundtrip(mixed: keras.Model, path: Path) -> keras.Model:
    """float32_model, saved and loaded again as train.py ships model.keras."""
    distribute.float32_model(mixed).save(path)
    assert keras.mixed_precision.global_policy().name == "float32"
    return keras.models.load_model(path, compile=False)


if __name__ == "__main__":
    if sys.argv[1] == "multi-process":  # one process of a JAX cluster set up by KERAS_DISTRIBUTION_* variables
        keras.utils.set_random_seed(0)
        shard = distribute.data_shard()  # joins the cluster first
        parallel = train("data-parallel", shard=shard)
        report = compare(train("none", parallel["initial"]), parallel) if shard[0] == 0 else {}
        Path(sys.argv[2]).write_text(json.dumps(dict(report, shard=shard)))
    elif sys.argv[1] == "train-py-process":  # train.py's main in one process of a JAX cluster
        import train

        cache, root, out = sys.argv[2:5]
        sys.exit(train.main(["--cache", cache, "--root", root, "--out", out, "--strategy", "data-parallel", "--epochs",
                             "2", "--image-size", "32", "--width", "8", "--batch-size", "6", "--precision", "float32"]))
    else:
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                       [tf.config.LogicalDeviceConfiguration()] * 2)
        if sys.argv[1] == "train-py":  # train.py's main on the two devices
            import train

            cache, root, out, strategy = sys.argv[2:6]
            code = train.main(["--cache", cache, "--root", root, "--out", out, "--strategy", strategy, "--epochs", "2",
                               "--image-size", "32", "--width", "8", "--batch-size", "6", "--precision", "float32"])
            print(json.dumps({"exit": code, "replicas": distribute.local_replicas(strategy)}))
        else:
            print(json.dumps(compare_parallel_with_single(sys.argv[1])))
