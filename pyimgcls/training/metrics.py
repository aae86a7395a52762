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


def plot_curves(history: list[dict], path: str) -> None:
    """Loss (train, test) and accuracy (train, test) per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    a1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a1.plot(ep, [h["test_loss"] for h in history], "s-", label="test")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy loss")
    a1.set_yscale("log")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(ep, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    a2.plot(ep, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy (%)")
    a2.legend()
    a2.grid(alpha=0.3)
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
