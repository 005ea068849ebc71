"""How hard a task is without a language model: majority class, bag of words, word overlap.

Works on any task in the `tasks/<name>/` contract (world or user), numpy only:

- `majority`: always answer the most common training label (ties: the first in sort order).
- `bow`: logistic regression on binary bag-of-words features (pair tasks: words tagged by
  side), full-batch gradient descent with L2; classification, entailment and similarity.
- `overlap` (multiple choice): pick the choice sharing most words with the context.
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


def bow(train: list[dict], test: list[dict], task_type: str, steps: int = 300, lr: float = 0.5,
        l2: float = 1e-3) -> float:
    """Test accuracy of a bag-of-words logistic regression fit on `train`."""
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
    pred = (Xt @ W).argmax(1)
    gold = np.array([lab.get(str(r["label"]), -1) for r in test])
    return float((pred == gold).mean())


def overlap(test: list[dict]) -> float:
    """Multiple choice: accuracy of choosing the ending whose words the context shares most."""
    right = 0
    for r in test:
        ctx = set(_words(r["context"]))
        shares = [len(set(_words(c)) & ctx) / max(len(set(_words(c))), 1) for c in r["choices"]]
        right += int(np.argmax(shares)) == int(r["label"])
    return right / len(test)


def difficulty(task_type: str, train: list[dict], test: list[dict]) -> dict[str, float]:
    """{'majority': acc, 'bow' or 'overlap': acc, 'chance': 1/n_classes} on `test`."""
    n = len(test[0]["choices"]) if task_type == "multiple_choice" else len({str(r["label"]) for r in train})
    out = {"chance": 1.0 / n, "majority": majority(train, test)}
    if task_type == "multiple_choice":
        out["overlap"] = overlap(test)
    else:
        out["bow"] = bow(train, test, task_type)
    return out
