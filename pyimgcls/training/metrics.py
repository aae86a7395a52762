"""Classification metrics (scikit-learn) and report plots (matplotlib, Agg backend)."""
from __future__ import annotations

import json
import os

import numpy as np


def classification_metrics(targets: np.ndarray, scores: np.ndarray, num_classes: int) -> dict:
    """targets int [N]; scores float [N, num_classes] (logits or probabilities).

    Returns top-1 / top-5 accuracy (fractions), macro precision / recall / F1 and the confusion
    matrix (rows: true class, columns: predicted), all over every class 0..num_classes-1."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

    labels = np.arange(num_classes)
    preds = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    out = {"test_accuracy": float(accuracy_score(targets, preds)) if len(targets) else 0.0}
    if len(targets) and num_classes > 5:
        out["test_top5_accuracy"] = float(top_k_accuracy_score(targets, scores, k=5, labels=labels))
    else:  # with 5 classes or fewer every label is in the top 5
        out["test_top5_accuracy"] = 1.0 if len(targets) else 0.0
    p, r, f, _ = precision_recall_fscore_support(targets, preds, labels=labels, average="macro", zero_division=0)
    out.update(precision_macro=float(p), recall_macro=float(r), f1_macro=float(f))
    out["confusion_matrix"] = confusion_matrix(targets, preds, labels=labels).tolist()
    return out


def write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy", "lr",
                   "images_per_s", "train_time_s", "elapsed_s", "global_step")


def write_history_csv(history: list[dict], path: str) -> None:
    """history.csv: one row per epoch (rewritten whole after each epoch, atomically, so a resumed or
    interrupted run never leaves a torn or duplicated row); empty cells where a run has no value
    (no validation split)."""
    import csv
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_COLUMNS})
    os.replace(tmp, path)


def plot_curves(history: list[dict], path: str) -> None:
    """Loss, accuracy (train and validation) and the learning rate per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    has_val = any(h.get("val_loss") is not None for h in history)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4), dpi=90)
    for ax, key, label, scale in ((a1, "loss", "cross-entropy loss", 1), (a2, "accuracy", "accuracy (%)", 100)):
        ax.plot(ep, [scale * h[f"train_{key}"] for h in history], "o-", label="train")
        if has_val:
            ax.plot(ep, [scale * h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(alpha=0.3)
    a1.set_yscale("log")
    a3.plot(ep, [h["lr"] for h in history], "o-", color="tab:green")
    a3.set_xlabel("epoch")
    a3.set_ylabel("learning rate (end of epoch)")
    a3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(matrix, class_names: list[str], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    n = len(m)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=90)
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        ticks = np.arange(n)
        names = [str(c)[:12] for c in class_names] if len(class_names) == n else [str(i) for i in ticks]
        ax.set_xticks(ticks, names, rotation=90 if max(map(len, names)) > 2 else 0)
        ax.set_yticks(ticks, names)
        if n <= 20:
            thresh = m.max() / 2 if m.size else 0
            for i in range(n):
                for j in range(n):
                    if m[i, j]:
                        ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if m[i, j] > thresh else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
