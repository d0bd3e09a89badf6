"""Precision and data-parallel training for train.py, on the TensorFlow or the JAX backend.

    python train.py ... --strategy mirrored --precision auto          # every GPU of one machine (TensorFlow)
    KERAS_BACKEND=jax python train.py ... --strategy data-parallel    # every device JAX sees
    KERAS_BACKEND=jax KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234 KERAS_DISTRIBUTION_NUM_PROCESSES=2 \\
        KERAS_DISTRIBUTION_PROCESS_ID=0 python train.py ... --strategy data-parallel   # machine 0 of 2; 1 likewise

    with strategy_scope(args.strategy) as replica_count, precision_scope(args.precision):
        check_batch_size(args.batch_size, replica_count)
        model = build_model(...); model.compile(...); model.fit(...)  # JAX reads the distribution during fit
    float32_model(best).save(...)                                      # what model.keras and the ONNX file carry

Several machines run on JAX only: strategy_scope calls keras.distribution.initialize()
(jax.distributed.initialize) when KERAS_DISTRIBUTION_JOB_ADDRESSES is set, and each process feeds only its
own rows (data_shard()) in batches of batch_size // process count. TensorFlow's MultiWorkerMirroredStrategy
is refused: Keras 3's fit fails under it (keras-team/keras#20585).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Iterator

from utils import UserError

if TYPE_CHECKING:  # each function imports Keras itself: train.py --help lists STRATEGIES without starting it
    import keras

STRATEGIES = ("auto", "none", "mirrored", "multi-worker", "data-parallel")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JAX_CLUSTER_VARIABLE = "KERAS_DISTRIBUTION_JOB_ADDRESSES"  # keras.distribution.initialize() reads it


def tf_gpu_capabilities() -> list[tuple[int, int]]:
    """CUDA compute capability of every GPU TensorFlow sees (empty on a CPU)."""
    import tensorflow as tf

    return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)))
            for gpu in tf.config.list_physical_devices("GPU")]


def resolve_precision(precision: str = "auto") -> str:
    """The Keras dtype policy name for --precision; auto picks what the accelerator runs fastest."""
    import keras

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        capabilities = tf_gpu_capabilities()
        oldest = min(capabilities, default=None)
        if precision == "mixed_bfloat16" and oldest is not None and oldest < (8, 0):
            raise UserError(f"--precision mixed_bfloat16 needs GPUs of compute capability 8.0 or newer "
                            f"(this one has {oldest[0]}.{oldest[1]}): use mixed_float16")
        if precision != "auto":
            return precision
        if oldest is None:
            return "float32"
        # bfloat16 needs no loss scaling; float16 tensor cores (Volta, Turing) still beat float32
        return "mixed_bfloat16" if oldest >= (8, 0) else "mixed_float16" if oldest >= (7, 0) else "float32"
    if precision != "auto":
        return precision
    if backend == "jax":
        import jax

        return "mixed_bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    return "float32"


@contextlib.contextmanager
def precision_scope(precision: str = "auto") -> Iterator[str]:
    """Build (and train) under a global dtype policy; yields its name and restores the previous one on exit."""
    import keras

    policy_name = resolve_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        yield policy_name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_model(model: keras.Model) -> keras.Model:
    """The same network and weights computing in float32 throughout: what model.keras and the ONNX file ship.

    Mixed policies keep float32 variables and only compute in 16 bits, so the weights carry over exactly.
    """
    import keras

    def float32_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if layer.dtype_policy.compute_dtype != "float32" and layer.dtype_policy.variable_dtype == "float32":
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    with precision_scope("float32"):
        converted = keras.models.clone_model(model, clone_function=float32_layer)
    converted.set_weights(model.get_weights())
    return converted


def tf_config_workers() -> int:
    """Number of workers TF_CONFIG describes (0 when it is unset); a bad TF_CONFIG is one clear line."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw)["cluster"]
        return len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG is not valid cluster JSON ({error!r})") from None


def initialize_jax_cluster() -> int:
    """Join the JAX cluster the KERAS_DISTRIBUTION_* variables describe (once); returns the process count."""
    import jax
    import keras

    if os.environ.get(JAX_CLUSTER_VARIABLE) and not jax.distributed.is_initialized():
        keras.distribution.initialize()
    return jax.process_count()


def resolve_strategy(strategy: str = "auto") -> str:
    """The concrete strategy for --strategy; auto spreads over every GPU or machine there is, else none."""
    import keras

    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    backend = keras.backend.backend()
    if strategy == "mirrored" and backend != "tensorflow":
        raise UserError("--strategy mirrored needs KERAS_BACKEND=tensorflow (on JAX use --strategy data-parallel)")
    if strategy == "data-parallel" and backend != "jax":
        raise UserError("--strategy data-parallel needs KERAS_BACKEND=jax (on TensorFlow use --strategy mirrored)")
    if strategy == "multi-worker" or (strategy == "auto" and backend == "tensorflow" and tf_config_workers() > 1):
        # MultiWorkerMirroredStrategy breaks in Keras 3's fit (its first batch is reduced as one tensor):
        # refused before any data is loaded rather than crashing after
        raise UserError("several machines do not train on Keras 3's TensorFlow backend (keras-team/keras#20585): "
                        "use KERAS_BACKEND=jax --strategy data-parallel with KERAS_DISTRIBUTION_* variables")
    if strategy != "auto":
        return strategy
    if backend == "tensorflow":
        return "mirrored" if len(tf_gpu_capabilities()) > 1 else "none"
    if backend == "jax":
        import jax

        return "data-parallel" if initialize_jax_cluster() > 1 or jax.device_count() > 1 else "none"
    return "none"


def mirrored_devices() -> list[str] | None:
    """Every GPU; on a machine without one, every logical CPU (one, unless split as the tests do)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None  # MirroredStrategy's own default: all GPUs
    return [device.name for device in tf.config.list_logical_devices("CPU")]


@contextlib.contextmanager
def strategy_scope(strategy: str = "auto") -> Iterator[int]:
    """Build, compile and fit inside this; yields the replica count (devices one global batch is split over).

    TensorFlow: MirroredStrategy over one machine's GPUs; JAX: Keras's DataParallel over every device of
    every process. The previous strategy or distribution is back on exit.
    """
    import keras

    strategy = resolve_strategy(strategy)
    if strategy == "none":
        yield 1
    elif strategy == "data-parallel":
        initialize_jax_cluster()
        # PyDatasets cannot be sharded by Keras: each process feeds its own rows (data_shard)
        distribution = keras.distribution.DataParallel(auto_shard_dataset=False)
        with distribution.scope():
            yield distribution.num_model_replicas
    else:
        import tensorflow as tf

        tf_strategy = tf.distribute.MirroredStrategy(mirrored_devices())
        with tf_strategy.scope():
            yield tf_strategy.num_replicas_in_sync


def local_replicas(strategy: str = "auto") -> int:
    """Devices of this process that each of its batches is split over under `strategy` (JAX needs
    batches divisible by it; FaceDataset trims them)."""
    strategy = resolve_strategy(strategy)
    if strategy == "none":
        return 1
    if strategy == "data-parallel":
        import jax

        return jax.local_device_count()
    import tensorflow as tf

    return len(mirrored_devices() or tf.config.list_logical_devices("GPU"))


def replicas() -> int:
    """Devices the current strategy scope splits a global batch over (1 outside any scope)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    distribution = keras.distribution.distribution()
    return distribution.num_model_replicas if distribution is not None else 1


def data_shard() -> tuple[int, int]:
    """(this process's index, process count): with several JAX processes each feeds only its own rows, in
    batches of batch_size // count (Keras cannot shard a PyDataset). TensorFlow runs one process: (0, 1)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        initialize_jax_cluster()  # before the first device query, which would fix a one-process view
        return jax.process_index(), jax.process_count()
    return 0, 1


def is_first_process() -> bool:
    """True in the one process that writes a run's files: the only one, or process 0 of a JAX cluster
    (the others train their share and never touch the run folder)."""
    return data_shard()[0] == 0


def check_batch_size(batch_size: int, replica_count: int | None = None) -> None:
    """Refuse a global batch that the replicas cannot share equally."""
    replica_count = replicas() if replica_count is None else replica_count
    if batch_size % replica_count:
        raise UserError(f"--batch-size {batch_size} cannot be split over {replica_count} devices: "
                        f"use a multiple of {replica_count}")

