"""The figures of a run: each ``plot_*`` function takes data and writes one PNG.

``write_all_plots(run_dir)`` reads a run directory and writes every figure into
``RUN/plots/``. Figures are built on ``matplotlib.figure.Figure`` with the Agg renderer,
never through pyplot, so drawing them changes no global state (a notebook's inline
backend keeps working) and needs no display.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ..errors import RunError
from ..evaluation.calibration import expected_calibration_error
from ..models.predict import load_run_model
from ..options import CLASS_NAMES
from ..paths import atomic_write
from ..runs import PLOT_FILES, Run
from .images import images_for_report

DPI = 90
SPLIT_COLORS = {"train": "#4c72b0", "val": "#4c72b0", "test": "#dd8452", "kaggle_val": "#55a868"}
GRADCAM_GROUPS = ("true positives", "false positives", "false negatives")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> Path:
    return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _styled(draw: Callable[[], Figure]) -> Figure:
    # Axes take the seaborn style that is active when they are created.
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.75):
        return draw()


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y)) < len(y)


# ------------------------------------------------------------------------------- figures
def plot_training_curves(history: pd.DataFrame, out: str | Path, best_epoch: int | None = None) -> Path:
    """Train and validation accuracy and loss (and ROC-AUC when logged) per epoch."""
    panels = [(m, t) for m, t in (("accuracy", "accuracy"), ("loss", "loss"), ("auc", "ROC-AUC"))
              if m in history.columns]
    missing = {"epoch", "accuracy", "loss"} - set(history.columns)
    if missing:
        raise ValueError(f"history lacks column(s) {', '.join(sorted(missing))}")

    def draw() -> Figure:
        fig = _new_figure(3.2 * len(panels), 2.8)
        for ax, (metric, title) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
            ax.plot(history["epoch"], history[metric], marker="o", ms=3, label="train", color="#4c72b0")
            if f"val_{metric}" in history.columns:
                ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", ms=3, label="val", color="#dd8452")
            if best_epoch:
                ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"best epoch ({best_epoch})")
            ax.set(title=title, xlabel="epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.axes[0].legend(fontsize="small")
        return fig

    return _save(_styled(draw), out)


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], out: str | Path, threshold: float | None = None,
                          split: str = "test") -> Path:
    """[[TN, FP], [FN, TP]] as counts and row percentages (rows: actual class)."""
    cm = np.asarray(confusion, dtype=int)
    if cm.shape != (2, 2):
        raise ValueError(f"confusion matrix must be 2x2, got shape {cm.shape}")
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    labels = [[f"{cm[i, j]}\n{share[i, j]:.1%}" for j in range(2)] for i in range(2)]

    def draw() -> Figure:
        fig = _new_figure(3.6, 3.2)
        ax = fig.subplots()
        sns.heatmap(share, annot=labels, fmt="", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                    xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, annot_kws={"fontsize": 11})
        at = f" at threshold {threshold:.3f}" if threshold is not None else ""
        ax.set(xlabel="predicted", ylabel="actual", title=f"{split}{at}")
        return fig

    return _save(_styled(draw), out)


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR, precision) of the rule probability >= threshold."""
    pred = p >= threshold
    tpr = float(pred[y == 1].mean())
    fpr = float(pred[y == 0].mean())
    precision = float(y[pred].mean()) if pred.any() else float("nan")
    return fpr, tpr, precision


def plot_roc_pr(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float, out: str | Path) -> Path:
    """ROC and precision-recall curves per split ({split: (labels, probabilities)}),
    with the operating point of ``threshold`` marked on each."""
    def draw() -> Figure:
        fig = _new_figure(7.0, 3.2)
        ax_roc, ax_pr = fig.subplots(1, 2)
        ax_roc.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
        for split, (y, p) in curves.items():
            y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
            if not _both_classes(y):
                continue  # a curve needs both classes
            color = SPLIT_COLORS.get(split, None)
            fpr, tpr, _ = roc_curve(y, p)
            ax_roc.plot(fpr, tpr, color=color, label=f"{split} (AUC {roc_auc_score(y, p):.3f})")
            precision, recall, _ = precision_recall_curve(y, p)
            ax_pr.step(recall, precision, where="post", color=color,
                       label=f"{split} (AP {average_precision_score(y, p):.3f})")
            ax_pr.axhline(y.mean(), ls=":", lw=1, color=color)
            op_fpr, op_tpr, op_precision = _operating_point(y, p, threshold)
            ax_roc.plot(op_fpr, op_tpr, "o", color=color, mec="black", ms=7)
            ax_pr.plot(op_tpr, op_precision, "o", color=color, mec="black", ms=7)
        ax_roc.plot([], [], "o", color="white", mec="black", label=f"threshold {threshold:.3f}")
        ax_roc.set(xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", title="ROC",
                   xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall",
                  xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax_roc.legend(fontsize="small", loc="lower right")
        ax_pr.legend(fontsize="small", loc="lower left")
        return fig

    return _save(_styled(draw), out)


def plot_calibration(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], out: str | Path,
                     temperature: float | None = None, bins: int = 10) -> Path:
    """Reliability diagram per split ({split: (labels, raw, calibrated probabilities)}),
    before and after temperature scaling, with the ECE of each."""
    if not curves:
        raise ValueError("no split to draw a reliability diagram for")

    def draw() -> Figure:
        fig = _new_figure(3.3 * len(curves), 3.3)
        for ax, (split, (y, raw, calibrated)) in zip(np.atleast_1d(fig.subplots(1, len(curves))), curves.items()):
            y = np.asarray(y).astype(int)
            ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
            for name, p, style in (("before", raw, ":"), ("after", calibrated, "-")):
                p = np.asarray(p, dtype=float)
                observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
                ece = expected_calibration_error(y, p)
                ax.plot(predicted, observed, style, marker="o", ms=3, label=f"{name} (ECE {ece:.3f})")
            ax.set(title=split, xlabel="mean predicted P(pneumonia)", ylabel="observed pneumonia rate",
                   xlim=(0, 1), ylim=(0, 1))
            ax.legend(fontsize="small", loc="upper left")
        if temperature is not None:
            fig.suptitle(f"temperature scaling, T = {temperature:.3f} (fitted on val)")
        return fig

    return _save(_styled(draw), out)


def _caption(label: int, predicted: int, probability: float) -> str:
    return f"actual {CLASS_NAMES[int(label)]}\npredicted {CLASS_NAMES[int(predicted)]} ({probability:.3f})"


def plot_prediction_grid(images: np.ndarray, labels: Sequence[int], predicted: Sequence[int],
                         probabilities: Sequence[float], out: str | Path, columns: int = 6) -> Path:
    """X-rays with actual vs predicted label and P(pneumonia); wrong ones titled in red."""
    if len(images) == 0:
        raise ValueError("no images to show")
    rows = int(np.ceil(len(images) / columns))
    fig = _new_figure(1.6 * columns, 1.95 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, y, pred, p in zip(axes, images, labels, predicted, probabilities):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(_caption(y, pred, p), fontsize=7, color="#1a7f37" if y == pred else "#cf222e")
    return _save(fig, out)


def plot_gradcam_grid(groups: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[float]]], out: str | Path,
                      columns: int = 4, alpha: float = 0.4) -> Path:
    """One row per group ({name: (images, heatmaps, probabilities)}) of Grad-CAM overlays."""
    from .gradcam import overlay

    fig = _new_figure(1.7 * columns, 2.0 * len(groups))
    for sub, (name, (images, heatmaps, probs)) in zip(np.atleast_1d(fig.subfigures(len(groups), 1)), groups.items()):
        sub.suptitle(f"{name} ({len(images)} shown)", fontsize=9)
        axes = np.atleast_1d(sub.subplots(1, columns))
        for ax in axes:
            ax.axis("off")
        if len(images) == 0:
            axes[0].text(0, 0.5, "none in this split", fontsize=8, transform=axes[0].transAxes)
        for ax, image, heat, p in zip(axes, images, heatmaps, probs):
            ax.imshow(overlay(image, heat, alpha=alpha))
            ax.set_title(f"P(pneumonia) {p:.3f}", fontsize=7)
    return _save(fig, out)


# ----------------------------------------------------------------------- choosing images
def select_samples(table: pd.DataFrame, n: int = 12, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows, a third of them misclassified when there are any, in a seeded mixed order."""
    wrong = table[table["label"] != table["predicted"]]
    right = table[table["label"] == table["predicted"]]
    n_wrong = min(len(wrong), n // 3)
    n_right = min(len(right), n - n_wrong)
    n_wrong = min(len(wrong), n - n_right)  # few correct ones: show more mistakes instead
    rng = np.random.default_rng(seed)
    picked = pd.concat([wrong.iloc[rng.choice(len(wrong), n_wrong, replace=False)],
                        right.iloc[rng.choice(len(right), n_right, replace=False)]])
    return picked.iloc[rng.permutation(len(picked))]


def select_gradcam_cases(table: pd.DataFrame, per_group: int = 4) -> dict[str, pd.DataFrame]:
    """The most confident true positives, false positives and false negatives."""
    positive, called = table["label"] == 1, table["predicted"] == 1
    return {
        "true positives": table[positive & called].nlargest(per_group, "probability"),
        "false positives": table[~positive & called].nlargest(per_group, "probability"),
        "false negatives": table[positive & ~called].nsmallest(per_group, "probability"),
    }


# ------------------------------------------------------------------------- run directory
def read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A run's CSV file, or a RunError naming the file and what is wrong with it."""
    if not path.is_file():
        raise RunError(f"{path}: not found")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: unreadable CSV ({exc})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


PREDICTION_COLUMNS = ("path", "split", "label", "probability", "raw_probability", "predicted")


class _RunData:
    """What the figures need from a run directory, each file read once and only when needed."""

    def __init__(self, run: Run):
        self.run = run
        self.cfg = run.config()
        self.metrics = run.metrics()
        self._predictions: pd.DataFrame | None = None

    @property
    def predictions(self) -> pd.DataFrame:
        if self._predictions is None:
            self._predictions = read_table(self.run.predictions_file, PREDICTION_COLUMNS)
        return self._predictions

    def split(self, name: str) -> pd.DataFrame:
        part = self.predictions[self.predictions["split"] == name]
        if part.empty:
            raise RunError(f"{self.run.predictions_file}: no {name} rows")
        return part

    def splits_present(self, names: Sequence[str]) -> list[str]:
        return [s for s in names if (self.predictions["split"] == s).any()]

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"]["value"])


def _draw_training_curves(data: _RunData, out: Path) -> Path:
    history = read_table(data.run.history_file, ("epoch", "accuracy", "loss"))
    best = (data.metrics.get("training") or {}).get("best_epoch")
    return plot_training_curves(history, out, best_epoch=best)


def _draw_confusion(data: _RunData, out: Path) -> Path:
    if "test" not in data.metrics:
        raise RunError(f"{data.run.metrics_file}: no test metrics")
    return plot_confusion_matrix(data.metrics["test"]["confusion_matrix"], out, data.threshold, "test")


def _draw_roc_pr(data: _RunData, out: Path) -> Path:
    curves = {s: (data.split(s)["label"].to_numpy(), data.split(s)["probability"].to_numpy())
              for s in data.splits_present(("val", "test"))}
    return plot_roc_pr(curves, data.threshold, out)


def _draw_calibration(data: _RunData, out: Path) -> Path:
    curves = {s: (data.split(s)["label"].to_numpy(), data.split(s)["raw_probability"].to_numpy(),
                  data.split(s)["probability"].to_numpy()) for s in data.splits_present(("val", "test"))}
    temperature = (data.metrics.get("calibration") or {}).get("temperature")
    return plot_calibration(curves, out, temperature)


def _draw_scope_scores(data: _RunData, out: Path) -> Path:
    from .scope_scores import plot_scope_scores, read_extra_scores

    if "ood_score" not in data.predictions.columns or "scope" not in data.metrics:
        raise RunError(f"{data.run.predictions_file}: no ood_score column; run `pneumoscan evaluate {data.run.root}`")
    groups = {s: data.split(s)["ood_score"].to_numpy() for s in data.splits_present(("val", "test"))}
    groups.update({name: part["ood_score"].to_numpy() for name, part in read_extra_scores(data.run).groupby("group")})
    return plot_scope_scores(groups, float(data.metrics["scope"]["threshold"]), out)


def _draw_samples(data: _RunData, out: Path) -> Path:
    picked = select_samples(data.split("test"))
    images, kept = images_for_report(picked["path"].tolist(), data.cfg)
    picked = picked.iloc[kept]
    return plot_prediction_grid(images, picked["label"].tolist(), picked["predicted"].tolist(),
                                picked["probability"].tolist(), out)


def gradcam_groups(model, cases: Mapping[str, pd.DataFrame], cfg) -> dict[str, tuple[np.ndarray, np.ndarray, list]]:
    """{group: rows of predictions.csv} -> {group: (images, Grad-CAM maps, probabilities)} for
    :func:`plot_gradcam_grid`; rows whose image cannot be read are left out with a warning."""
    from .gradcam import gradcam

    loaded = {name: images_for_report(rows["path"].tolist(), cfg) for name, rows in cases.items()}
    everything = np.concatenate([images for images, _ in loaded.values()])
    # One Grad-CAM pass over every case: the gradient graph is built once.
    heatmaps = gradcam(model, everything) if len(everything) else everything.astype(np.float32)
    groups, start = {}, 0
    for name, (images, kept) in loaded.items():
        groups[name] = (images, heatmaps[start:start + len(images)], cases[name]["probability"].iloc[kept].tolist())
        start += len(images)
    return groups


def _draw_gradcam(data: _RunData, out: Path) -> Path:
    groups = gradcam_groups(load_run_model(data.run), select_gradcam_cases(data.split("test")), data.cfg)
    return plot_gradcam_grid(groups, out)


# One drawer per figure, in the order of PLOT_FILES.
_DRAWERS: dict[str, Callable[[_RunData, Path], Path]] = dict(zip(PLOT_FILES, (
    _draw_training_curves, _draw_confusion, _draw_roc_pr, _draw_calibration, _draw_scope_scores, _draw_samples,
    _draw_gradcam)))


def draw_plots(run_dir: str | Path) -> tuple[list[Path], dict[str, str]]:
    """Write every figure into ``RUN/plots/``; returns (written files, {file name: why it failed}).

    One figure failing (say, Grad-CAM on an unusual model) does not stop the others.
    """
    data = _RunData(Run(Path(run_dir)))
    written, failures = [], {}
    for name, draw in _DRAWERS.items():
        target = data.run.plot_file(name)
        target.unlink(missing_ok=True)  # a failed redraw must not leave an older run's picture behind
        try:
            written.append(draw(data, target))
        except Exception as exc:  # any failure of one figure is reported, and the rest still drawn
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"pneumoscan: warning: could not draw {target}: {failures[name]}", file=sys.stderr)
    return written, failures


def write_all_plots(run_dir: str | Path) -> list[Path]:
    """Every figure of a run, written into ``RUN/plots/``; a figure that fails is warned about and skipped."""
    return draw_plots(run_dir)[0]
