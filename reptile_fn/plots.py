"""PNG figures (matplotlib, Agg backend): adaptation curves, meta-training curves, sine fits."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path


def _config_dir() -> None:
    """A private MPLCONFIGDIR when matplotlib's own (~/.config/matplotlib) cannot be written, e.g. HOME=/dev/null or
    a read-only home: matplotlib would print two lines about it and make a temporary folder of its own anyway."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    try:
        folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return
    except (OSError, RuntimeError):  # RuntimeError: no home directory at all
        pass
    os.environ["MPLCONFIGDIR"] = private = tempfile.mkdtemp(prefix="reptile_fn-matplotlib-")
    atexit.register(shutil.rmtree, private, ignore_errors=True)


_config_dir()

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reptile_fn import io  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with io.atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def adaptation_curves(ev: dict, path: str | Path, title: str | None = None) -> Path:
    """Query metric (accuracy, %) or MSE against inner steps, one line per init, with 95% CI bands."""
    accuracy = ev["metric"] == "accuracy"
    key, scale = ("metric", 100.0) if accuracy else ("loss", 1.0)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in ev["inits"].items():
        steps = np.array(curve["steps"])
        m, ci = scale * np.array(curve[key]["mean"]), scale * np.array(curve[key]["ci95"])
        ax.plot(steps, m, label=name, marker="o" if len(steps) <= 12 else None, markersize=3)
        ax.fill_between(steps, m - ci, m + ci, alpha=0.2)
    ax.set_xlabel("inner steps on the support set")
    ax.set_ylabel("query accuracy (%)" if accuracy else "query MSE")
    if not accuracy:
        ax.set_yscale("log")
    ax.set_title(title or f"held-out tasks, k_shot={ev['k_shot']} ({next(iter(ev['inits'].values()))['episodes']} episodes)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def training_curve(metrics_jsonl: str | Path, path: str | Path, title: str | None = None) -> Path:
    """Held-out metric and training support loss against meta-iterations, from a run's metrics.jsonl."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    records = [r for r in io.read_jsonl(metrics_jsonl) if isinstance(r, dict) and number(r.get("iteration"))]
    logs = [{k: v for k, v in r.items() if number(v)} for r in records if "eval" not in r]  # what a hand edit left odd: skipped
    evals = [r for r in records if isinstance(r.get("eval"), dict) and any(number(r["eval"].get(k)) for k in ("metric", "loss"))]
    key = "metric" if evals and number(evals[0]["eval"].get("metric")) else "loss"
    evals = [r for r in evals if number(r["eval"].get(key))]
    fig, ax = plt.subplots(figsize=(6, 4))
    its = [r["iteration"] for r in logs]
    ax.plot(its, [r.get("support_loss", np.nan) for r in logs], label="support loss before adaptation")
    if any("adapted_loss" in r for r in logs):
        ax.plot(its, [r.get("adapted_loss", np.nan) for r in logs], label="support loss at the last inner step")
    if any("query_loss" in r for r in logs):
        ax.plot(its, [r.get("query_loss", np.nan) for r in logs], label="query loss after adaptation")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx() if key == "metric" else ax
        scale = 100.0 if key == "metric" else 1.0  # accuracy in %, as every table prints it
        ax2.plot([r["iteration"] for r in evals], [scale * r["eval"][key] for r in evals], color="C3", marker="o",
                 markersize=3, label="held-out accuracy after adaptation (%)" if key == "metric" else "held-out query loss")
        if key == "metric":
            ax2.set_ylabel("held-out query accuracy (%)")
            ax2.legend(loc="lower right")
    ax.legend(loc="upper right")
    ax.set_title(title or "meta-training")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def sine_fit(x_plot: np.ndarray, y_true: np.ndarray, support: tuple[np.ndarray, np.ndarray],
             predictions: dict[str, dict[int, np.ndarray]], path: str | Path, title: str | None = None) -> Path:
    """The MAML-paper figure: true curve, K support points, and each init's prediction after t steps.

    ``predictions[init][t]`` is the prediction on ``x_plot`` after t inner steps.
    """
    names = list(predictions)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(x_plot, y_true, color="k", lw=2, label="ground truth")
        ax.scatter(support[0], support[1], color="k", marker="^", zorder=5, label=f"{len(support[0])} support points")
        for i, (t, pred) in enumerate(sorted(predictions[name].items())):
            ax.plot(x_plot, pred, ls="--" if t == 0 else "-", color=f"C{i}", label=f"after {t} steps")
        ax.set_title(name)
        ax.set_ylim(-6, 6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(title or "sine regression: few-shot adaptation")
    return _save(fig, path)


def task_embeddings(result: dict, path: str | Path) -> Path:
    """2-D PCA of each task embedding (one panel each), coloured by family; queries hollow.

    Rows are scaled to unit length first: identification compares them by cosine.
    """
    from reptile_fn.embed.similarity import pca_2d

    names = list(result["embeddings"])
    what, groups = result.get("what", "family"), result["families"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.4), squeeze=False)
    labels, is_query = np.asarray(result["labels"]), np.asarray(result["is_query"])
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "gist_ncar")(np.linspace(0, 0.95, len(groups)) if len(groups) > 10
                                                                         else np.arange(len(groups)))
    for ax, name in zip(axes[0], names):
        e = np.asarray(result["embeddings"][name], dtype=np.float64)
        xy = pca_2d(e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12))
        for i, family in enumerate(groups):
            color = colors[i]
            bank, query = (labels == i) & ~is_query, (labels == i) & is_query
            ax.scatter(*xy[bank].T, s=9, color=color, alpha=0.6, label=family)
            ax.scatter(*xy[query].T, s=14, facecolors="none", edgecolors=color, linewidths=0.8)
        ax.set_title(f"{name}: {100 * result['accuracy'][name]:.1f}% identified")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.grid(alpha=0.3)
    if len(groups) <= 10:  # a legend of more would cover the panel
        axes[0][0].legend(title=f"{what} (hollow: queries)", fontsize=8)
    many = f", coloured by {what} ({len(groups)}; hollow: queries)" if len(groups) > 10 else ""
    fig.suptitle(f"task embeddings of fresh held-out tasks, k_shot={result['k_shot']}{many}")
    return _save(fig, path)
