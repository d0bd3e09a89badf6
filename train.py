"""Train the age and gender CNN on a cache.csv.

    python train.py --cache imdb/cache.csv --root imdb --out runs/wiki                   # IMDB-WIKI
    python train.py --cache data/utkface.csv --root data --out runs/utk --packed         # UTKFace, on a CPU
    python train.py --cache imdb/cache.csv --root imdb --width 64 --image-size 128 --batch-size 256 \
        --strategy mirrored --packed --out runs/big                                      # several GPUs
    python train.py ... --out runs/utk --resume                                          # continue a run

Writes into --out: model.keras (best validation age MAE), last.keras (for --resume), model.json (the
model card), model.onnx (TensorFlow backend), split.csv, log.csv, tensorboard/ and curves.png.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
from pathlib import Path

import keras
import pandas as pd

from backbone import AgeMAE, age_distribution_loss, build_model
from build_cache import load_cache
from faces import DETECTION_SCORE, make_framing
from generator import FaceDataset, pack_faces, split_table
from model_card import FORMAT_VERSION, write_card
from utils import UserError, atomic_path, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="cache.csv from build_cache.py")
    parser.add_argument("--root", default="imdb", help="folder the cache's paths are relative to (default: imdb)")
    parser.add_argument("--out", default="runs/default", help="run folder (default: runs/default)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: 30)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    parser.add_argument("--image-size", type=int, default=96,
                        help="model input side in pixels, a multiple of 4 (default: 96)")
    parser.add_argument("--width", type=int, default=24, help="channels of the first stage; 64 for GPUs (default: 24)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate (default: 3e-3)")
    parser.add_argument("--gender-weight", type=float, default=2.0,
                        help="gender loss weight next to age's 1 (default: 2.0)")
    parser.add_argument("--patience", type=int, default=15,
                        help="early stopping patience in epochs; the cosine schedule's last epochs count "
                             "(default: 15)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed for the split, weights and augmentation (default: 42)")
    parser.add_argument("--limit", type=int, help="use only this many rows (quick experiments)")
    parser.add_argument("--packed", action="store_true", help="frame all faces once into a memory-mapped array first")
    parser.add_argument("--workers", type=int, default=2, help="data loading threads (default: 2)")
    parser.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                        help="mirrored: tf.distribute.MirroredStrategy over all GPUs (TensorFlow backend)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.keras")
    args = parser.parse_args(argv)
    if args.image_size % 4:
        parser.error("--image-size must be a multiple of 4")
    return args


def distribution_scope(strategy: str):
    """Mixed precision on GPUs; a MirroredStrategy scope when asked (TensorFlow only)."""
    backend = keras.backend.backend()
    has_gpu = False
    if backend == "tensorflow":
        import tensorflow as tf

        has_gpu = bool(tf.config.list_physical_devices("GPU"))
    elif backend == "jax":
        import jax

        has_gpu = jax.default_backend() == "gpu"
    if has_gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if strategy == "mirrored":
        if backend != "tensorflow":
            raise UserError("--strategy mirrored needs KERAS_BACKEND=tensorflow")
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def model_card(args, table: pd.DataFrame, splits: dict, metrics: dict, parameters: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "name": Path(args.out).name,
        "task": "age (years, 0-100) and gender (P(male)) from one face",
        "input": {"size": args.image_size, "colour_order": "BGR", "dtype": "float32",
                  "scaling": "raw 0-255 pixels; the model rescales to [-1, 1] itself"},
        "framing": make_framing(),
        "detector": {"name": "yunet", "score_threshold": DETECTION_SCORE},
        "outputs": {"age": "softmax over ages 0..100; age = expected value", "gender": "P(male), sigmoid"},
        "inference": "outputs averaged over the framed face and its mirror image (predict.mirror_average)",
        "age_range": [0, 100],
        "architecture": {"width": args.width, "parameters": parameters},
        "data": {"cache": Path(args.cache).name, "rows": int(len(table)), "seed": args.seed,
                 "split": {name: int(len(part)) for name, part in splits.items()}},
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                     "gender_weight": args.gender_weight, "backend": keras.backend.backend()},
        "metrics": metrics,
        "licence": "trained on IMDB-WIKI / UTKFace data: non-commercial research use only",
    }


def plot_curves(log_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = pd.read_csv(log_path)
    panels = [("loss", "loss"), ("age_mae", "age MAE (years)"), ("gender_accuracy", "gender accuracy")]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, (key, title) in zip(axes, panels):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in log:
                axis.plot(log["epoch"] + 1, log[prefix + key], marker="o", label=label)
        axis.set(title=title, xlabel="epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_path(out_path) as temp_path:
        figure.savefig(temp_path, dpi=100, format="png")
    plt.close(figure)


def evaluate_split(model: keras.Model, dataset: FaceDataset) -> dict:
    """Age MAE, CS@5 and gender accuracy of a model over a (non-augmented) dataset."""
    from evaluate import predict_dataset, summary_metrics

    return summary_metrics(*predict_dataset(model, dataset))


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if args.resume and not (out / "last.keras").is_file():
        raise UserError(f"nothing to resume: {out / 'last.keras'} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    table = load_cache(args.cache)
    if args.limit:
        table = table.sample(min(args.limit, len(table)), random_state=args.seed).reset_index(drop=True)
    split_path = out / "split.csv"
    if args.resume and split_path.is_file():  # the same rows as before, whatever the cache holds now
        assignment = pd.read_csv(split_path).set_index("path")["split"]
        table = table[table["path"].isin(assignment.index)].reset_index(drop=True)
        splits = {name: table[table["path"].map(assignment) == name] for name in ("train", "val", "test")}
    else:
        splits = split_table(table, args.seed)
        with atomic_path(split_path) as temp_path:
            assignment = pd.concat([part[["path"]].assign(split=name) for name, part in splits.items()])
            assignment.to_csv(temp_path, index=False)
    print(", ".join(f"{name}: {len(part)} faces" for name, part in splits.items()))

    packed = pack_faces(table, args.root, args.image_size) if args.packed else None
    datasets = {name: FaceDataset(part, args.root, args.image_size, args.batch_size, augment=(name == "train"),
                                  seed=args.seed, packed=packed, workers=args.workers)
                for name, part in splits.items()}

    with distribution_scope(args.strategy):
        if args.resume:
            model = keras.models.load_model(out / "last.keras")
        else:
            model = build_model(args.image_size, args.width)
            warmup_steps = len(datasets["train"])  # one epoch of linear warm-up, then cosine decay
            schedule = keras.optimizers.schedules.CosineDecay(
                0.0, max(1, (args.epochs - 1) * warmup_steps), warmup_target=args.learning_rate,
                warmup_steps=warmup_steps)
            model.compile(
                optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                loss={"age": age_distribution_loss, "gender": keras.losses.BinaryCrossentropy(label_smoothing=0.05)},
                loss_weights={"age": 1.0, "gender": args.gender_weight},
                metrics={"age": [AgeMAE()], "gender": [keras.metrics.BinaryAccuracy(name="accuracy")]},
            )
    model.summary(line_length=100)
    print(f"parameters: {model.count_params():,}")

    history = pd.read_csv(out / "log.csv") if args.resume and (out / "log.csv").is_file() else pd.DataFrame()
    best_so_far = float(history["val_age_mae"].min()) if len(history) else None  # a resumed run keeps its best
    callbacks = [
        keras.callbacks.ModelCheckpoint(out / "model.keras", monitor="val_age_mae", mode="min", save_best_only=True,
                                        initial_value_threshold=best_so_far),
        keras.callbacks.ModelCheckpoint(out / "last.keras"),
        keras.callbacks.EarlyStopping(monitor="val_age_mae", mode="min", patience=args.patience),
        keras.callbacks.CSVLogger(out / "log.csv", append=args.resume),
    ]
    if importlib.util.find_spec("tensorboard"):  # not installed on every JAX machine
        callbacks.append(keras.callbacks.TensorBoard(out / "tensorboard"))
    model.fit(datasets["train"], validation_data=datasets["val"], epochs=args.epochs, initial_epoch=len(history),
              callbacks=callbacks)
    plot_curves(out / "log.csv", out / "curves.png")

    # The released model needs no optimizer state (last.keras keeps it for --resume): a third of the size.
    best = keras.models.load_model(out / "model.keras", compile=False)
    with atomic_path(out / "model.keras") as temp_path:
        best.save(temp_path)
    metrics = {name: evaluate_split(best, datasets[name]) for name in ("val", "test")}
    unreadable = sorted(set().union(*(d.unreadable for d in datasets.values())))
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable images, e.g. {unreadable[0]}")
    write_card(out, model_card(args, table, splits, metrics, best.count_params()))
    print(json.dumps(metrics, indent=2))
    if keras.backend.backend() == "tensorflow":
        from export import export_onnx

        export_onnx(out / "model.keras")
    print(f"saved {out / 'model.keras'}; try: python evaluate.py --model {out / 'model.keras'} "
          f"--cache {args.cache} --root {args.root}")
    return 0


if __name__ == "__main__":
    run_cli(main)
