"""Command line: a thin layer over the library. Every error is one clear line, never a traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import ConfigError, PneumoscanError
from .options import (ENGINES, EXPORT_FORMATS, JIT_MODES, PRECISIONS, QUANTIZATIONS, SERVE_MAX_BATCH,
                      SERVE_MAX_QUEUE, SERVE_MAX_WAIT_MS, SOURCES, STRATEGIES)

FLAG_KEYS = {  # flag -> config section.key
    "model": ("model", "name"), "epochs": ("train", "epochs"), "image_size": ("data", "image_size"),
    "batch_size": ("train", "batch_size"), "seed": ("train", "seed"), "source": ("data", "source"),
    "max_per_class": ("data", "max_per_class"), "max_minutes": ("train", "max_minutes"),
    "precision": ("train", "precision"), "jit_compile": ("train", "jit_compile"), "strategy": ("train", "strategy"),
    "tensorboard": ("train", "tensorboard"),
}
# Commands that load TensorFlow (its start-up lines are hidden unless --verbose).
TENSORFLOW_COMMANDS = ("train", "evaluate", "adapt", "predict", "explain", "export", "serve", "report")


def _overrides(args) -> dict:
    from .config import parse_overrides

    out = parse_overrides(args.set or [])
    for flag, (section, key) in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def cmd_train(args) -> int:
    from .config import resolve
    from .runs import Run
    from .training.strategy import placement_for

    if not args.resume and not args.out:
        raise ConfigError("train needs --out RUN_DIR (or --resume RUN_DIR)")
    cfg = Run(Path(args.resume)).config() if args.resume else resolve(args.config, _overrides(args))
    # First, before TensorFlow runs anything: MultiWorkerMirroredStrategy must be created then.
    placement = placement_for(cfg.train)
    from .api import train

    run = train(args.data, out=args.resume or args.out, config=cfg, resume=bool(args.resume), placement=placement)
    if not placement.is_chief:
        print(f"pneumoscan: worker {placement.worker_index} finished; the chief writes {run.root}")
        return 0
    _print_metrics(json.loads(run.metrics_file.read_text()), run.root)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_run

    _print_metrics(evaluate_run(args.run, args.data), Path(args.run))
    return 0


def _print_metrics(metrics: dict, root: Path) -> None:
    from .options import REPORTED_SPLITS

    thr = metrics["threshold"]
    print(f"\nrun: {root}\nthreshold {thr['value']:.4f} ({thr['rule']}, chosen on {thr['chosen_on']})")
    print(f"{'split':<11}{'n':>5}{'accuracy':>10}{'sens':>8}{'spec':>8}{'F1':>8}{'ROC-AUC':>9}  95% CI accuracy")
    for split in REPORTED_SPLITS:
        if split in metrics:
            m = metrics[split]
            lo, hi = m["ci95"]["accuracy"]
            print(f"{split:<11}{m['n']:>5}{m['accuracy']:>10.3f}{m['sensitivity']:>8.3f}{m['specificity']:>8.3f}"
                  f"{m['f1']:>8.3f}{m['roc_auc']:>9.4f}  {lo:.3f}-{hi:.3f}")


def cmd_adapt(args) -> int:
    from .api import adapt
    from .training.adapt import describe

    run = adapt(args.run, args.data, args.out, finetune=args.finetune, holdout=args.holdout, seed=args.seed,
                epochs=args.epochs, skip_unreadable=args.skip_unreadable, parent_data=args.parent_data)
    print(describe(run))
    print(f"wrote {run.root} (metrics.json, adapt.json, MODEL_CARD.md, report.html)")
    return 0


def cmd_predict(args) -> int:
    from .inference.batch import predict_to_output
    from .inference.predictor import Predictor

    predictor = Predictor.from_run(args.run, engine=args.engine, abstain=args.abstain)
    done = predict_to_output(predictor, args.inputs, batch_size=args.batch_size, output=args.output,
                             resume=args.resume, progress=args.progress or sys.stderr.isatty())
    if done.already_done:
        print(f"pneumoscan: {done.already_done} images already in {args.output}, not predicted again", file=sys.stderr)
    if done.out_of_scope:
        print(f"pneumoscan: {done.out_of_scope} of {done.rows} images are outside the model's scope "
              f"(in_scope False; their probabilities should not be trusted"
              f"{', labels left empty' if args.abstain else '; --abstain leaves their labels empty'})", file=sys.stderr)
    if done.warned:
        print(f"pneumoscan: {done.warned} of {done.rows} images carry a warning (see the warning column)", file=sys.stderr)
    if done.failed:
        print(f"pneumoscan: {done.failed} of {done.rows} inputs failed (see the error column)", file=sys.stderr)
    return 1 if done.failed else 0


def _print_table(table, header: bool) -> None:
    import pandas as pd

    with pd.option_context("display.max_colwidth", 80, "display.width", 200, "display.max_rows", None):
        print(table.to_string(index=False, na_rep="", header=header), flush=True)


def cmd_data_download(args) -> int:
    from .data.download import download_medmnist

    path = download_medmnist(args.size, args.dest)
    print(f"saved {path}")
    return 0


def cmd_data_info(args) -> int:
    from .config import DataConfig
    from .data.dataset import assign_splits
    from .data.locate import resolve_data_path
    from .data.sources import read_source

    collection = read_source(resolve_data_path(args.data, args.source), args.source)
    collection.records = assign_splits(collection, DataConfig(source=args.source))
    print(f"{collection.kind} data at {collection.root}")
    _print_table(collection.summary(), header=True)
    for path, reason in collection.skipped:
        print(f"skipped {path}: {reason}")
    return 0


def cmd_explain(args) -> int:
    from .inference.explain import iter_explain

    rows = failed = 0
    for table in iter_explain(args.run, args.inputs, args.out, layer=args.layer):
        _print_table(table, header=rows == 0)
        rows += len(table)
        failed += int((table["error"] != "").sum())
    if failed:
        print(f"pneumoscan: {failed} of {rows} inputs failed (see the error column)", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args) -> int:
    from .deploy.export import export

    if args.quantize:
        if args.format != "onnx":
            raise ConfigError(f"--quantize {args.quantize} needs --format onnx")
        from .deploy.quantize import quantize_int8

        path = quantize_int8(args.run, args.out)
        check = json.loads((path.parent / "preprocessing.json").read_text())["exports"]["onnx-int8"]["check"]
        print(f"int8 check on {check['images']} validation images: labels agree on {check['label_agreement']:.2%}, "
              f"ROC-AUC {check['roc_auc_float']:.4f} -> {check['roc_auc_int8']:.4f}")
    else:
        path = export(args.run, args.format, args.out)
    print(f"wrote {path} and {path.parent / 'preprocessing.json'}")
    return 0


def cmd_serve(args) -> int:
    from .deploy.serve import serve

    from .deploy.serve import Batching

    batching = Batching(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    serve(args.run, host=args.host, port=args.port, engine=args.engine, max_upload_mb=args.max_upload_mb,
          api_key_file=args.api_key_file, batching=batching, threads=args.threads)
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .runs import PLOT_FILES, Run

    if args.scope_folder:
        from .report.scope_scores import score_folders

        scored = score_folders(args.run, args.scope_folder)
        for group, part in scored.groupby("group"):
            print(f"scored {len(part)} images of {group} (out-of-scope score median {part['ood_score'].median():.2f})")
    path = write_report(args.run)
    missing = [name for name in PLOT_FILES if not Run(Path(args.run)).plot_file(name).is_file()]
    print(f"wrote {path}" + (f" (figures not drawn: {', '.join(missing)})" if missing else ""))
    return 1 if missing else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .data.download import MEDMNIST_FILES

    parser = argparse.ArgumentParser(prog="pneumoscan", description="Pneumonia detection on chest X-rays.")
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    parser.add_argument("--verbose", action="store_true", help="also show TensorFlow's own start-up messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,adapt,predict,explain,report,export,serve,data}")

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--data", help="Kermany folder, MedMNIST .npz or CSV manifest (default: $PNEUMOSCAN_DATA)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--config", help="a named config (default, quick) or a TOML/JSON file (a run's config.json repeats that run)")
    p.add_argument("--model", help="model name: seed_cnn, pneumonet, pneumonet_small, efficientnetb0, ...")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--source", choices=SOURCES)
    p.add_argument("--max-per-class", type=int, help="use at most N images per class and split (quick runs)")
    p.add_argument("--max-minutes", type=float, help="training time budget")
    p.add_argument("--precision", choices=PRECISIONS, help="auto: float32 on CPU, mixed_float16 on GPU")
    p.add_argument("--jit-compile", choices=JIT_MODES, help="XLA; auto: off on CPU, on for one GPU")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy; auto: multiworker if TF_CONFIG, mirrored if >1 GPU, else one")
    p.add_argument("--tensorboard", action="store_const", const=True,
                   help="also write TensorBoard logs (scalars per epoch, learning rate) into RUN_DIR/tensorboard/")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="any other config value")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("evaluate", help="recompute metrics.json for a run")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--data", help="where the run's data is now, if it moved")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("adapt", help="recalibrate a run for a new site with its own labelled images")
    p.add_argument("run", metavar="RUN_DIR", help="the trained run to adapt")
    p.add_argument("--data", required=True, help="the site's images: a CSV (path,label[,patient_id]) or a folder "
                                                  "holding NORMAL/ and PNEUMONIA/ (50-500 images)")
    p.add_argument("--out", required=True, metavar="NEW_RUN_DIR", help="the adapted run to create")
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune batch-norm statistics and the classifier head (needs the parent's data)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of the site's images, by patient, held out "
                                                               "to measure before and after (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split and the fine-tuning")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    p.add_argument("--skip-unreadable", action="store_true", help="leave unreadable site images out instead of stopping")
    p.add_argument("--parent-data", help="where the parent run's data is now, if it moved (--finetune)")
    p.set_defaults(fn=cmd_adapt)

    p = sub.add_parser("predict", help="predict on image files, folders or globs")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("inputs", nargs="+", metavar="PATH")
    p.add_argument("--output", "-o", help="also write the rows, batch by batch, to x.csv or x.jsonl "
                                           "(x.json: one array, written at the end)")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded and predicted at a time")
    p.add_argument("--resume", action="store_true", help="skip the images already in --output and append the rest")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr even when it is not a terminal")
    p.add_argument("--abstain", action="store_true",
                   help="leave the label empty for images outside the model's scope (the probability is still shown)")
    p.add_argument("--engine", choices=ENGINES, default="keras",
                   help="keras (model.keras), onnx (ONNX Runtime; exported to RUN_DIR/export/ on first use) or "
                        "onnx-int8 (made by export --quantize int8)")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM heatmaps: where in each X-ray the model saw pneumonia")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for one PNG per image")
    p.add_argument("--layer", metavar="NAME", help="spatial layer to explain (default: the last one)")
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("export", help="export a run's model to ONNX, SavedModel or TFLite")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="int8: also write model.int8.onnx, calibrated on validation images, refused if it loses quality")
    p.add_argument("--out", metavar="DIR", help="folder to write into (default: RUN_DIR/export)")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("serve", help="web page and JSON API for a run's model")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", choices=ENGINES, default="keras")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted file (default 20)")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require this file's key on every /api request (Authorization: Bearer KEY)")
    p.add_argument("--max-batch", type=int, default=SERVE_MAX_BATCH,
                   help=f"most images scored together (default {SERVE_MAX_BATCH})")
    p.add_argument("--max-wait-ms", type=float, default=SERVE_MAX_WAIT_MS,
                   help=f"how long the first image of a batch waits for others (default {SERVE_MAX_WAIT_MS:g} ms)")
    p.add_argument("--max-queue", type=int, default=SERVE_MAX_QUEUE,
                   help=f"images that may wait; beyond, requests get 503 with Retry-After (default {SERVE_MAX_QUEUE})")
    p.add_argument("--threads", type=int, help="inference threads (default: every core)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("report", help="draw a run's figures, write RUN_DIR/report.html and MODEL_CARD.md")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--scope-folder", action="append", metavar="DIR",
                   help="also score this folder's images for the out-of-scope figure (repeatable)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("data", help="download or inspect data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download an official MedMNIST file (MD5-checked)")
    d.add_argument("dataset", choices=["pneumoniamnist"])
    d.add_argument("--size", type=int, default=28, choices=sorted(MEDMNIST_FILES))
    d.add_argument("--dest", help="folder to save into (default: the pneumoscan cache)")
    d.set_defaults(fn=cmd_data_download)
    d = dsub.add_parser("info", help="images and patients per split and class, and skipped files")
    d.add_argument("--data")
    d.add_argument("--source", default="auto", choices=SOURCES)
    d.set_defaults(fn=cmd_data_info)
    return parser


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN notice, absl warning) hidden.

    They are written to file descriptor 2 before TensorFlow's log level applies, so only a
    redirection of the descriptor hides them; should the import fail, they are shown.
    """
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif args.command in TENSORFLOW_COMMANDS and "tensorflow" not in sys.modules:
        import_tensorflow_quietly()
    try:
        return args.fn(args)
    except (PneumoscanError, ValueError, OSError) as exc:
        print(f"pneumoscan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pneumoscan: interrupted; a training run continues with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
