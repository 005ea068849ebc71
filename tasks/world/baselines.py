"""How hard a task is without a language model: majority class, bag of words, word overlap.

Works on any task in the `tasks/<name>/` contract (world or user), numpy only:

- `majority`: always answer the most common training label (ties: the first in sort order).
- `bow` (`bow_predictions`): logistic regression on binary bag-of-words features (pair tasks:
  words tagged by side), full-batch gradient descent with L2; classification, entailment and similarity.
- `overlap_predictions` (multiple choice): pick the choice sharing most words with the context.
- `word_correct`: the word baseline of a task type, right or wrong per test row (what fine-tuning
  is compared with item by item); `difficulty`: all of them as accuracies.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

FIELDS = {"classification": ("text",), "entailment": ("premise", "hypothesis"),
          "similarity": ("text_a", "text_b")}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def majority(train: list[dict], test: list[dict]) -> float:
    counts = Counter(str(r["label"]) for r in train)
    top = min(counts, key=lambda k: (-counts[k], k))
    return sum(str(r["label"]) == top for r in test) / len(test)


def _features(rows: list[dict], fields: tuple[str, ...]) -> list[set[str]]:
    return [{f"{i}:{w}" for i, f in enumerate(fields) for w in _words(r[f])} for r in rows]


def bow_predictions(train: list[dict], test: list[dict], task_type: str, steps: int = 300, lr: float = 0.5,
                    l2: float = 1e-3) -> list[str]:
    """The label (as str) a bag-of-words logistic regression fit on `train` predicts for each test row."""
    fields = FIELDS[task_type]
    ftr, fte = _features(train, fields), _features(test, fields)
    vocab = {w: j for j, w in enumerate(sorted(set().union(*ftr)))}
    labels = sorted({str(r["label"]) for r in train})
    lab = {c: k for k, c in enumerate(labels)}

    def matrix(feats: list[set[str]]) -> np.ndarray:
        X = np.zeros((len(feats), len(vocab) + 1), dtype=np.float64)
        X[:, -1] = 1.0  # bias
        for i, fs in enumerate(feats):
            X[i, [vocab[w] for w in fs if w in vocab]] = 1.0
        return X

    X, Xt = matrix(ftr), matrix(fte)
    y = np.array([lab[str(r["label"])] for r in train])
    Y = np.eye(len(labels))[y]
    W = np.zeros((X.shape[1], len(labels)))
    for _ in range(steps):
        Z = X @ W
        P = np.exp(Z - Z.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        W -= lr * (X.T @ (P - Y) / len(X) + l2 * W)
    return [labels[k] for k in (Xt @ W).argmax(1)]


def bow(train: list[dict], test: list[dict], task_type: str) -> float:
    """Test accuracy of a bag-of-words logistic regression fit on `train`."""
    return sum(p == str(r["label"]) for p, r in zip(bow_predictions(train, test, task_type), test)) / len(test)


def overlap_predictions(test: list[dict]) -> list[int]:
    """Multiple choice: per row the index of the ending whose words the context shares most (ties: the first)."""
    out = []
    for r in test:
        ctx = set(_words(r["context"]))
        shares = [len(set(_words(c)) & ctx) / max(len(set(_words(c))), 1) for c in r["choices"]]
        out.append(int(np.argmax(shares)))
    return out


def word_correct(task_type: str, train: list[dict], test: list[dict]) -> tuple[str, list[bool]]:
    """The word baseline (overlap for multiple choice, else bow fit on `train`): its name and, per
    test row, whether it is right. Their mean is `difficulty`'s number for that baseline."""
    if task_type == "multiple_choice":
        return "overlap", [p == int(r["label"]) for p, r in zip(overlap_predictions(test), test)]
    return "bow", [p == str(r["label"]) for p, r in zip(bow_predictions(train, test, task_type), test)]


def difficulty(task_type: str, train: list[dict], test: list[dict]) -> dict[str, float]:
    """{'majority': acc, 'bow' or 'overlap': acc, 'chance': 1/n_classes} on `test`."""
    n = len(test[0]["choices"]) if task_type == "multiple_choice" else len({str(r["label"]) for r in train})
    name, hits = word_correct(task_type, train, test)
    return {"chance": 1.0 / n, "majority": majority(train, test), name: sum(hits) / len(test)}
