"""Train the age and gender CNN on one or more caches.

    python train.py --cache imdb/cache.csv --root imdb --out runs/wiki                   # IMDB-WIKI
    python train.py --cache data/utkface.csv data/lfw.csv --root data --out runs/mix --packed   # two sources
    python train.py --cache data/utkface.csv --root data --out runs/utk --packed --epochs 60 --resume
    python train.py --cache data/utkface.csv data/lfw.csv data/wiki.csv --root data --teacher --out runs/kd --packed
    python train.py --cache imdb/cache.csv --root imdb --out runs/big --width 64 --image-size 128 \\
        --batch-size 256 --packed --strategy mirrored --precision auto                 # every GPU

The checkpoint is chosen on validation faces of every source alike (CHOICE below): in-the-wild sources
(WIKI, LFW) weigh as much as aligned UTKFace. `--teacher` mixes in teacher.py's soft labels.

Writes into --out: model.keras (best validation choice score, float32), last.keras (for --resume),
model.json (the model card), model.onnx (TensorFlow backend; the card embedded), split.csv, log.csv,
tensorboard/ and curves.png. Several GPUs and machines: see `--strategy` and the README.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from build_cache import add_source_arguments, check_source_arguments, load_sources
from distribute import (PRECISIONS, STRATEGIES, check_batch_size, data_shard, float32_model, is_first_process,
                        local_replicas, precision_scope, strategy_scope)
from evaluate import held_out_metrics
from faces import DETECTION_SCORE, make_framing
from model_card import FORMAT_VERSION, IMAGE_SIZE, WIDTH, write_card
from utils import (HelpFormatter, UserError, atomic_path, float_between, int_at_least, positive_float, positive_int,
                   file_sha256, locked, require_packages, run_cli, write_json)

# Keras (and TensorFlow with it), pandas and the modules built on them are imported by the functions that
# use them, once the arguments are parsed: --help answers at once, without TensorFlow's start-up lines.
if TYPE_CHECKING:
    import keras
    import pandas as pd

    from generator import FaceDataset

DEFAULT_CONTEXT = 1.0  # framing context of new runs; the shipped model's card records its own
# What a run that failed before its first checkpoint leaves: starting afresh over it is fine.
START_FILES = {"run.json", "split.csv", "tensorboard", ".lock"}
WRITTEN_FILES = ("model.keras", "last.keras", "split.csv", "run.json", "model.json", "model.onnx", "curves.png")
# What shapes a run's data and model: a resumed run must use the values it started with.
RUN_SETTINGS = ("cache", "root", "source_weights", "image_size", "width", "context", "framing", "seed", "limit",
                "batch_size", "learning_rate", "min_lr", "teacher", "teacher_weight")
# The checkpoint is chosen on the mean, over validation sources, of each source's age MAE (years, sources with
# ages) plus CHOICE_GENDER_YEARS x its gender error rate (sources with genders): a point of gender accuracy
# weighs 0.2 years, and a small wild source counts as much as a large aligned one.
CHOICE_GENDER_YEARS = 20.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_source_arguments(parser, "cache.csv file(s) from build_cache.py")
    parser.add_argument("--source-weights", nargs="+", type=float_between(0.0, low_inclusive=False),
                        help="share of each epoch drawn from each cache (default: by row count)")
    parser.add_argument("--out", default="runs/default", help="run folder")
    parser.add_argument("--epochs", type=positive_int, default=30, help="training epochs (in all, when resuming)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step (global batch)")
    parser.add_argument("--image-size", type=int_at_least(32), default=IMAGE_SIZE, help="model input side, a multiple of 4")
    parser.add_argument("--width", type=positive_int, default=WIDTH, help="channels of the first stage; 64 for GPUs")
    parser.add_argument("--context", type=float_between(1.0, 2.0), default=DEFAULT_CONTEXT,
                        help="framing context: 1 = tight like UTKFace chips, 1.3 = hair and jaw line in")
    parser.add_argument("--framing", choices=["auto", "landmarks", "box"], default="auto",
                        help="auto: landmarks when most rows have them, else face boxes")
    parser.add_argument("--learning-rate", type=positive_float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--min-lr", type=float_between(0.0), default=3e-5, help="learning rate at the end of the cosine")
    parser.add_argument("--gender-weight", type=float_between(0.0), default=2.0, help="gender loss weight next to age's 1")
    parser.add_argument("--patience", type=positive_int, default=15, help="early stopping patience in epochs")
    parser.add_argument("--seed", type=int, default=42, help="seed for the split, weights and augmentation")
    parser.add_argument("--limit", type=positive_int, help="use only this many rows (quick experiments)")
    parser.add_argument("--packed", action="store_true", help="frame all faces once into a memory-mapped array first")
    parser.add_argument("--workers", type=positive_int, default=2, help="data loading threads")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: every GPU of this machine (TensorFlow: mirrored; JAX: data-parallel, also "
                             "over several machines, see distribute.py); none: one device")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bfloat16 mixed precision on GPUs that have it, float32 on CPUs; the saved "
                             "model is float32 whatever the choice")
    parser.add_argument("--teacher", action="store_true",
                        help="mix teacher.py's soft labels into the targets (each cache needs CACHE.teacher.npz)")
    parser.add_argument("--teacher-weight", type=float_between(0.0, 1.0), default=0.5,
                        help="with --teacher: the teacher's share of each target, and the weight of a label "
                             "only the teacher gives (LFW's ages)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.keras")
    parser.add_argument("--init", metavar="MODEL_KERAS",
                        help="start from this model's weights (same --image-size and --width): fine-tuning")
    parser.add_argument("--split-like", metavar="SPLIT_CSV",
                        help="with --init: the split.csv of the run that made it; images it trained on (by "
                             "content) stay in training, its val/test images stay there, new rows split as usual")
    args = parser.parse_args(argv)
    if args.image_size % 4:
        parser.error("--image-size must be a multiple of 4")
    check_source_arguments(parser, args)
    if args.source_weights and len(args.source_weights) != len(args.cache):
        parser.error(f"give one --source-weights value per cache ({len(args.cache)})")
    if args.split_like and not args.init:
        parser.error("--split-like goes with --init")
    if args.min_lr > args.learning_rate:
        parser.error("--min-lr must not exceed --learning-rate")
    return args


def load_training_sources(args) -> tuple[pd.DataFrame, dict[str, float] | None, np.ndarray | None]:
    """All caches as one table (a `source` and a `root` column per row), each source's weight, and with
    --teacher the teacher's outputs (rows of generator.load_teacher, a `teacher_row` column in the table)."""
    import pandas as pd

    from generator import load_teacher

    tables = load_sources(args.cache, args.root)
    empty = [cache for cache, table in zip(args.cache, tables) if table.empty]
    if empty:
        raise UserError(f"no rows in {', '.join(empty)}: nothing to train on from it")
    if any((table["source"] == "all").any() for table in tables):
        raise UserError("a source is named 'all', which the reports use for every face together: set the cache's "
                        "source column (or rename the cache file) to another name")
    teacher = load_teacher(args.cache, tables) if args.teacher else None
    table = pd.concat(tables, ignore_index=True)
    weights = None
    if args.source_weights:
        names = [t["source"].iloc[0] for t in tables]
        if len(set(names)) != len(names):
            raise UserError("--source-weights needs caches of different sources")
        weights = dict(zip(names, args.source_weights))
    return table, weights, teacher


def keep_run_settings(args, out: Path) -> None:
    """A new run records its arguments in run.json; a resumed one must match them (it also takes
    --init and --split-like from there, for the card)."""
    path = out / "run.json"
    if not args.resume:
        if is_first_process():
            write_json(path, vars(args))
        return
    if not path.is_file():
        return  # a run from before run.json existed
    first = json.loads(path.read_text())
    changed = [f"--{key.replace('_', '-')} {first[key]}" for key in RUN_SETTINGS
               if key in first and first[key] != getattr(args, key)]
    if changed:
        raise UserError(f"{out} was started with {', '.join(changed)}: resume it with the same settings")
    args.init, args.split_like = first.get("init"), first.get("split_like")


def choose_framing(table: pd.DataFrame, method: str, context: float) -> dict:
    """The framing training applies and the card records: landmarks when most rows have them."""
    with_landmarks = int(table["right_eye_x"].notna().sum())
    if method == "auto":
        method = "landmarks" if with_landmarks >= len(table) / 2 else "box"
    framing = make_framing(method, context)
    landmark_rows = with_landmarks if method == "landmarks" else 0
    framing["rows_by_method"] = {"landmarks": landmark_rows, "box": int(len(table) - landmark_rows)}
    return framing


def make_splits(table: pd.DataFrame, out: Path, args) -> dict[str, pd.DataFrame]:
    """A new split (by person or image content), or on --resume the one the run started with."""
    import pandas as pd

    from generator import split_table

    split_path = out / "split.csv"
    if args.resume:
        if not split_path.is_file():
            raise UserError(f"cannot resume: {split_path} is missing")
        assignment = pd.read_csv(split_path, dtype=str, keep_default_na=False)
        keys = table["source"].astype(str) + "|" + table["path"].astype(str)
        mapped = keys.map(dict(zip(assignment["source"] + "|" + assignment["path"], assignment["split"])))
        return {name: table[mapped == name] for name in ("train", "val", "test")}
    splits = split_like(table, args.split_like, args.seed) if args.split_like else split_table(table, args.seed)
    if not is_first_process():  # every process draws the same split; the first records it
        return splits
    with atomic_path(split_path) as temp_path:
        pd.concat([part[["source", "path"]].assign(split=name) for name, part in splits.items()]).to_csv(
            temp_path, index=False)
    return splits


def split_like(table: pd.DataFrame, split_csv: str, seed: int) -> dict[str, pd.DataFrame]:
    """A split that keeps an earlier run honest when its model is fine-tuned: its validation and test
    images (by content, an identical copy under another name too) and their people stay held out,
    what it trained on stays in training, and people it never saw are split by split_table."""
    import pandas as pd

    from generator import group_keys, split_table

    try:
        earlier = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UserError(f"--split-like {split_csv} is not a readable split.csv: {str(error).splitlines()[0]}") \
            from None
    if not {"path", "split"} <= set(earlier.columns) or "content_hash" not in table:
        raise UserError(f"--split-like needs {split_csv} with path and split columns and caches with content_hash")
    unknown = set(earlier["split"]) - {"train", "val", "test"}
    if unknown:
        raise UserError(f"--split-like {split_csv} names splits other than train, val and test: "
                        f"{', '.join(sorted(unknown))}")
    hashes = dict(zip(table["path"], table["content_hash"]))
    matched_roots = table.loc[table["path"].isin(earlier["path"]), "root"]
    earlier_root = Path(matched_roots.mode().iloc[0] if len(matched_roots) else ".")  # where its images live
    content_split: dict[str, str] = {}
    for path, name in zip(earlier["path"], earlier["split"]):
        digest = hashes.get(path)
        if digest is None:  # a copy the cleaned cache dropped: identify it by its bytes
            image_path = earlier_root / path
            digest = file_sha256(image_path) if image_path.is_file() else None
        if digest is not None and content_split.get(digest) != "train":
            content_split[digest] = name
    seen = table["content_hash"].map(content_split)
    # A person goes where their earlier images went, held-out splits first: nobody tested was trained on.
    rank = seen.map({"test": 0, "val": 1, "train": 2}).groupby(group_keys(table)).transform("min")
    assigned = rank.map({0: "test", 1: "val", 2: "train"})
    conflicted = (seen == "train") & (assigned != "train")  # trained on, yet their person is held out
    if conflicted.any():
        print(f"--split-like: dropped {conflicted.sum()} images the earlier model trained on whose person it "
              "held out")
        table, assigned = table[~conflicted], assigned[~conflicted]
    new_rows = table[assigned.isna()]
    rest = split_table(new_rows, seed) if len(new_rows) else {name: new_rows for name in ("train", "val", "test")}
    return {name: pd.concat([table[assigned == name], rest[name]]) for name in ("train", "val", "test")}


def learning_rate_schedule(args, steps_per_epoch: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """One epoch of linear warm-up, then a cosine down to --min-lr at the last epoch of --epochs."""
    import keras

    return keras.optimizers.schedules.CosineDecay(
        0.0, max(1, (args.epochs - 1) * steps_per_epoch), alpha=args.min_lr / args.learning_rate,
        warmup_target=args.learning_rate, warmup_steps=steps_per_epoch)


def compile_model(model: keras.Model, args, steps_per_epoch: int) -> None:
    import keras

    from backbone import AgeMAE, GenderAccuracy, age_distribution_loss

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate_schedule(args, steps_per_epoch), weight_decay=1e-4),
        loss={"age": age_distribution_loss, "gender": keras.losses.BinaryCrossentropy(label_smoothing=0.05)},
        loss_weights={"age": 1.0, "gender": args.gender_weight},
        # weighted: rows whose label is unknown (weight 0) do not count; gender targets may be soft (--teacher)
        weighted_metrics={"age": [AgeMAE()], "gender": [GenderAccuracy()]},
    )


def resume_model(path: Path, args, steps_per_epoch: int) -> keras.Model:
    """last.keras with its optimizer state, under a schedule rebuilt for the run's total --epochs."""
    import keras

    import backbone  # noqa: F401  registers the custom loss and metric for loading

    saved = keras.models.load_model(path)
    state = [keras.ops.convert_to_numpy(variable) for variable in saved.optimizer.variables]
    compile_model(saved, args, steps_per_epoch)
    saved.optimizer.build(saved.trainable_variables)
    if len(state) != len(saved.optimizer.variables):
        raise UserError(f"cannot resume from {path}: its optimizer state does not match this model")
    for variable, value in zip(saved.optimizer.variables, state):  # step count and Adam moments carry on
        variable.assign(value)
    return saved


def load_initial_weights(model: keras.Model, path: str) -> None:
    import keras

    try:
        initial = keras.models.load_model(path, compile=False)
    except Exception as error:
        raise UserError(f"cannot load --init {path}: {str(error).splitlines()[0][:200]}") from None
    shapes = [tuple(w.shape) for w in model.weights]
    if [tuple(w.shape) for w in initial.weights] != shapes:
        raise UserError(f"--init {path} has another architecture: use its --image-size and --width")
    model.set_weights(initial.get_weights())


def model_card(args, table: pd.DataFrame, splits: dict, framing: dict, metrics: dict, parameters: int,
               source_weights: dict | None, precision: str) -> dict:
    import keras

    sources = table.groupby("source").agg(rows=("path", "size"), with_age=("age", "count"),
                                          with_gender=("gender", "count"))
    return {
        "format_version": FORMAT_VERSION,
        "name": Path(args.out).name,
        "task": "age (years, 0-100) and gender (P(male)) from one face",
        "input": {"size": args.image_size, "colour_order": "BGR", "dtype": "float32",
                  "scaling": "raw 0-255 pixels; the model rescales to [-1, 1] itself"},
        "framing": framing,
        "detector": {"name": "yunet", "score_threshold": DETECTION_SCORE},
        "outputs": {"age": "softmax over ages 0..100; age = expected value", "gender": "P(male), sigmoid"},
        "inference": "outputs averaged over the framed face and its mirror image (predict.mirror_average)",
        "age_range": [0, 100],
        "architecture": {"width": args.width, "parameters": parameters},
        "data": {"sources": {name: {key: int(value) for key, value in row.items()}
                             | {"weight": (source_weights or {}).get(name, "by rows")}
                             for name, row in sources.iterrows()},
                 "rows": int(len(table)), "seed": args.seed,
                 "split": {name: int(len(part)) for name, part in splits.items()},
                 "split_rule": "by person where the source names one, else by image content (duplicates together)"
                 + (f"; images that --init's model trained on (by content) kept in training ({args.split_like})"
                    if args.split_like else "")},
        "training": {"arguments": vars(args), "backend": keras.backend.backend(),
                     "precision": f"trained in {precision}; saved and exported in float32",
                     "commit": git_commit()},
        "metrics": metrics,
        "metrics_note": "validation chose the checkpoint; test was computed once at the end and chose nothing",
        "licence": "trained on IMDB-WIKI / UTKFace / LFW data: non-commercial research use only",
    }


def git_commit() -> str | None:
    """The commit the code was at (with '+changes' when the tree had uncommitted edits), if known."""
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if dirty else "")) or None


def plot_curves(log_path: Path, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log = pd.read_csv(log_path)
    panels = [("loss", "loss"), ("age_mae", "age MAE (years)"), ("gender_accuracy", "gender accuracy")]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, (key, title) in zip(axes, panels):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in log:
                axis.plot(log["epoch"] + 1, log[prefix + key], marker="o", label=label)
        for column in log.columns if key != "loss" else []:  # each validation source apart (ValidationBySource)
            if column.startswith("val_") and column.endswith("_" + key) and column != "val_" + key:
                axis.plot(log["epoch"] + 1, log[column], linestyle="--", label=column[4:-len(key) - 1])
        axis.set(title=title, xlabel="epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_path(out_path) as temp_path:
        figure.savefig(temp_path, dpi=100, format="png")
    plt.close(figure)


def choice_score(metrics: dict) -> float:
    """The validation figure the checkpoint is chosen on (lower is better): see CHOICE_GENDER_YEARS."""
    terms = [figures["age_mae"] for source, figures in metrics.items() if source != "all" and figures["n_age"]]
    terms += [CHOICE_GENDER_YEARS * (1 - figures["gender_accuracy"])
              for source, figures in metrics.items() if source != "all" and figures["n_gender"]]
    return float(np.mean(terms)) if terms else float("nan")


def fit(args, out: Path, datasets: dict[str, FaceDataset], history: pd.DataFrame) -> str:
    """Build (or resume) and train the model under the chosen strategy and precision; returns the
    precision policy used. Checkpoints land in out/model.keras (best) and out/last.keras."""
    import keras

    from backbone import build_model
    from callbacks import LearningRateLogger, SafeCheckpoint, ValidationBySource

    steps_per_epoch = len(datasets["train"])
    with strategy_scope(args.strategy) as replica_count, precision_scope(args.precision) as policy:
        check_batch_size(args.batch_size, replica_count)
        if args.resume:
            model = resume_model(out / "last.keras", args, steps_per_epoch)
        else:
            model = build_model(args.image_size, args.width)
            if args.init:
                load_initial_weights(model, args.init)
            compile_model(model, args, steps_per_epoch)
        model.summary(line_length=100)
        print(f"parameters: {model.count_params():,}; precision {policy}; {replica_count} replica(s)")
        # a resumed run keeps its best (runs from before val_choice restart the choice)
        best_so_far = float(history["val_choice"].min()) if "val_choice" in history else None
        callbacks = [
            LearningRateLogger(),
            keras.callbacks.TerminateOnNaN(),
            ValidationBySource(datasets["val"], choice_score),
            SafeCheckpoint(out / "model.keras", monitor="val_choice", best=best_so_far),
            SafeCheckpoint(out / "last.keras"),
            keras.callbacks.EarlyStopping(monitor="val_choice", mode="min", patience=args.patience),
        ]
        if is_first_process():  # the other processes of a JAX cluster never write into the run folder
            callbacks.append(keras.callbacks.CSVLogger(out / "log.csv", append=args.resume))
            if importlib.util.find_spec("tensorboard"):  # not installed on every JAX machine
                callbacks.append(keras.callbacks.TensorBoard(out / "tensorboard"))
        result = model.fit(datasets["train"], validation_data=datasets["val"], epochs=args.epochs,
                           initial_epoch=len(history), callbacks=callbacks)
    if not np.isfinite(result.history.get("loss", [0.0])).all():
        raise UserError("training diverged (the loss became NaN): nothing was exported; lower --learning-rate "
                        "or check the cache's labels")
    if is_first_process() and not (out / "model.keras").is_file():
        raise UserError("no epoch produced a finite validation score: nothing was exported")
    return policy


def main(argv=None) -> int:
    require_packages("train.py", "keras", "pandas")
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if args.resume and not (out / "last.keras").is_file():
        raise UserError(f"nothing to resume: {out / 'last.keras'} does not exist")
    if not is_first_process():  # joins a JAX cluster first; process 0 checks, locks and writes --out alone
        return train_run(args, out)
    if not args.resume and (out / "last.keras").exists():
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if not args.resume and out.exists() and any(p.name not in START_FILES and not is_unfinished_write(p)
                                                for p in out.iterdir()):
        raise UserError(f"{out} holds other files: choose an empty or new folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    with locked(out / ".lock", f"another train.py is using {out}"):
        for path in filter(is_unfinished_write, out.iterdir()):  # only now: no other train.py writes them
            path.unlink()
        return train_run(args, out)


def is_unfinished_write(path: Path) -> bool:
    """The temporary file of a write that a killed run left unfinished: utils.atomic_path names it
    .NAME.<8 random characters>.SUFFIX (anything else, such as a user's .split.csv.swp, is kept)."""
    return path.is_file() and not path.is_symlink() and any(
        re.fullmatch(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}{re.escape(Path(name).suffix)}", path.name)
        for name in WRITTEN_FILES)


def train_run(args, out: Path) -> int:
    """Everything after the checks on --out, with the run folder locked."""
    import keras
    import pandas as pd

    from generator import FaceDataset, pack_faces

    keep_run_settings(args, out)
    keras.utils.set_random_seed(args.seed)

    table, source_weights, teacher = load_training_sources(args)
    if args.limit:
        table = table.sample(min(args.limit, len(table)), random_state=args.seed).reset_index(drop=True)
    splits = make_splits(table, out, args)
    print(", ".join(f"{name}: {len(part)} faces" for name, part in splits.items()))
    for name in ("train", "val"):  # checkpoints and early stopping follow the validation age error
        if splits[name]["age"].isna().all():
            raise UserError(f"no face of the {name} split has an age: add a source with ages (e.g. UTKFace)")
    framing = choose_framing(table, args.framing, args.context)
    history = pd.read_csv(out / "log.csv") if args.resume and (out / "log.csv").is_file() else pd.DataFrame()
    if len(history) >= args.epochs:
        raise UserError(f"the run already has {len(history)} epochs: pass a larger --epochs to continue it")

    packed = pack_faces(table, args.root[0], args.image_size, framing) if args.packed else None
    shard, shard_count = data_shard()  # several JAX processes: each feeds its own, equally many rows
    datasets = {name: FaceDataset(part.iloc[shard:len(part) - len(part) % shard_count:shard_count], args.root[0],
                                  args.image_size,
                                  args.batch_size // shard_count, augment=(name == "train"), seed=args.seed,
                                  packed=packed, workers=args.workers, framing=framing,
                                  epoch=len(history) if name == "train" else 0, source_weights=source_weights,
                                  batch_multiple=local_replicas(args.strategy) if name != "test" else 1,
                                  teacher=teacher if name == "train" else None, teacher_weight=args.teacher_weight)
                for name, part in splits.items()}  # the test split is scored by evaluate.py's own batching
    precision = fit(args, out, datasets, history)
    if shard:
        return 0  # the first process writes the run's results
    plot_curves(out / "log.csv", out / "curves.png")

    # The released model computes in float32 and carries no optimizer state (last.keras keeps it for --resume).
    best = float32_model(keras.models.load_model(out / "model.keras", compile=False))
    with atomic_path(out / "model.keras") as temp_path:
        best.save(temp_path)
    metrics = {name: held_out_metrics(best, datasets[name]) for name in ("val", "test")}
    unreadable = sorted(set().union(*(d.unreadable for d in datasets.values())))
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable images, e.g. {unreadable[0]}")
    write_card(out, model_card(args, table, splits, framing, metrics, best.count_params(), source_weights,
                               precision))
    print(json.dumps(metrics, indent=2))
    if keras.backend.backend() == "tensorflow":
        from export import export_onnx

        export_onnx(out / "model.keras")
    print(f"saved {out / 'model.keras'}; try: python evaluate.py --model {out / 'model.keras'} "
          f"--cache {' '.join(args.cache)} --root {' '.join(args.root)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
