"""95 % intervals of HEAR test scores, and the scene metrics they (and the readout probe) are computed with.

heareval 2021.1.3 keeps, beside each embedded task's test.predicted-scores.json, the test predictions of every
scored split: `<split>.predictions.pkl` ("test", or each fold of a k-fold task), a dict of tensors "target"
and "prediction" (softmax or sigmoid outputs, one row per clip; per frame for event tasks, which add
"target_events" and "predicted_events", {file: [{"label", "start", "end"}]}). From those:

- scene tasks: a percentile bootstrap of the primary metric over test clips (RESAMPLES resamples, generator
  seeded with SEED); for a k-fold task each fold is resampled on its own and the folds' scores averaged, as
  heareval averages them.
- event tasks scored by an event-based F-measure (sed_eval's, as heareval calls it): the same bootstrap over
  test files, from each file's counts of true positives, system and reference events (the overall F is
  2 Ntp / (Nsys + Nref) of the summed counts, so resampling files resamples those sums).

When the predictions are missing, unreadable or do not reproduce heareval's score, an accuracy metric gets a
Wilson interval from the score and the number of test clips; other metrics get none. An interval is
{"method", "low", "high", "half_width", ...}: half_width is (high - low) / 2 (a percentile interval need not
be symmetric). A mean of independent scores, sum_t w_t s_t, gets half-width sqrt(sum_t (w_t h_t)^2)
(combine_half_widths): sqrt(sum h_t^2) / T for the plain mean of T tasks.
"""
from __future__ import annotations

import csv
import io
import math
import pickle
import warnings
from pathlib import Path

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5 % quantile
RESAMPLES = 1000
SEED = 0
ACCURACY_METRICS = ("top1_acc", "pitch_acc", "chroma_acc")
SCENE_METRICS = (*ACCURACY_METRICS, "mAP", "d_prime", "aucroc")


# ------------------------------------------------------------------------------------------ scene metrics


def correct(metric: str, prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(n,) whether each clip's top class is its target class (octave errors forgiven for chroma_acc), as
    heareval's Top1Accuracy and ChromaAccuracy count them; prediction and target (n, n_classes)."""
    predicted, actual = prediction.argmax(1), target.argmax(1)
    if metric == "chroma_acc":
        return predicted % 12 == actual % 12
    if metric in ("top1_acc", "pitch_acc"):
        return predicted == actual
    raise ValueError(f"{metric!r} is not an accuracy metric ({ACCURACY_METRICS})")


def scene_score(metric: str, prediction: np.ndarray, target: np.ndarray) -> float:
    """heareval's scene metric `metric` of predictions (n, n_classes: probabilities) against multi-hot or
    one-hot targets (n, n_classes); NaN where heareval's is (ROC needs both classes of every label)."""
    if metric in ACCURACY_METRICS:
        return float(correct(metric, prediction, target).mean())
    from sklearn.metrics import average_precision_score, roc_auc_score

    with warnings.catch_warnings():  # a label with no positive in a small resample: sklearn warns, heareval too
        warnings.simplefilter("ignore")
        if metric == "mAP":
            return float(average_precision_score(target, prediction, average="macro"))
        try:
            if metric == "aucroc":
                return float(roc_auc_score(target, prediction, average="macro"))
            if metric == "d_prime":
                from scipy import stats
                auc = roc_auc_score(target, prediction, average=None)
                return float(np.mean(stats.norm().ppf(auc) * np.sqrt(2.0)))
        except ValueError:
            return math.nan
    raise ValueError(f"no scene metric {metric!r} here (known: {SCENE_METRICS})")


# ------------------------------------------------------------------------------------------ intervals


def wilson(p: float, n: int, z: float = Z) -> dict:
    """Wilson's score interval of a proportion p observed on n trials."""
    if n <= 0 or not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a proportion in [0, 1] and n >= 1, got p={p}, n={n}")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"method": "wilson", "low": centre - half, "high": centre + half, "half_width": half, "n": int(n)}


def percentile_interval(values: np.ndarray, resamples: int, seed: int) -> dict:
    """The bootstrap interval of resampled statistics (NaN resamples left out, counted)."""
    finite = values[np.isfinite(values)]
    if finite.size < 0.9 * values.size:
        raise ValueError(f"{values.size - finite.size} of {values.size} resamples have no score")
    low, high = (float(q) for q in np.percentile(finite, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2]))
    return {"method": "bootstrap", "low": low, "high": high, "half_width": (high - low) / 2,
            "resamples": int(resamples), "seed": int(seed), "nan_resamples": int(values.size - finite.size)}


def bootstrap_scene(metric: str, folds: list[tuple[np.ndarray, np.ndarray]], resamples: int = RESAMPLES,
                    seed: int = SEED) -> tuple[float, dict]:
    """(the score, its bootstrap interval) of scene predictions: folds is [(prediction, target)] per scored
    split, each resampled over its clips; the statistic is the mean over folds."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([scene_score(metric, p, t) for p, t in folds]))
    per_fold = []
    for prediction, target in folds:
        idx = rng.integers(0, len(target), size=(resamples, len(target)))  # (R, n)
        if metric in ACCURACY_METRICS:
            per_fold.append(correct(metric, prediction, target)[idx].mean(1))
        else:
            per_fold.append(np.array([scene_score(metric, prediction[i], target[i]) for i in idx]))
    return point, percentile_interval(np.mean(per_fold, axis=0), resamples, seed)


def event_f(counts: np.ndarray) -> np.ndarray:
    """Overall event-based F-measure of summed counts (..., 3: Ntp, Nsys, Nref): 2 Ntp / (Nsys + Nref), NaN
    where no event was predicted or none is there (sed_eval's precision or recall is then undefined)."""
    ntp, nsys, nref = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((nsys > 0) & (nref > 0), 2 * ntp / (nsys + nref), np.nan)


def bootstrap_events(folds: list[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, dict]:
    """(the F-measure, its bootstrap interval) from per-file counts (n_files, 3) of each scored split."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([event_f(c.sum(0)) for c in folds]))
    per_fold = [event_f(c[rng.integers(0, len(c), size=(resamples, len(c)))].sum(1)) for c in folds]
    return point, percentile_interval(np.mean(per_fold, axis=0), resamples, seed)


def combine_half_widths(half_widths: list[float | None], weights: list[float] | None = None) -> float | None:
    """Half-width of sum_t w_t s_t for independent scores s_t of half-widths h_t: sqrt(sum_t (w_t h_t)^2); by
    default w_t = 1 / T (the mean). None when one of them has no interval."""
    if not half_widths or any(h is None for h in half_widths):
        return None
    weights = weights if weights is not None else [1.0 / len(half_widths)] * len(half_widths)
    return math.sqrt(sum((w * h) ** 2 for w, h in zip(weights, half_widths)))


def mean_of_group_means(items: list[tuple[str, float, float | None]],
                        groups: tuple[str, ...]) -> tuple[float, float | None] | None:
    """(overall score, its half-width) of one run from (group, score, half-width) per task: the mean over the
    groups present of each group's mean task score, the tables' "overall" (the plain mean over tasks when the
    groups hold as many tasks each, as in the mini suite). Tasks of a group outside groups are left out. The
    half-width combines the tasks' as independent (combine_half_widths, task t of group g weighing
    1 / (G |g|)); None when a task has no interval. None for no task in groups."""
    members = {g: [(s, h) for group, s, h in items if group == g] for g in groups}
    members = {g: m for g, m in members.items() if m}
    if not members:
        return None
    mean = sum(sum(s for s, _ in m) / len(m) for m in members.values()) / len(members)
    weights = [1.0 / (len(members) * len(m)) for m in members.values() for _ in m]
    return mean, combine_half_widths([h for m in members.values() for _, h in m], weights)


# ------------------------------------------------------------------------------------ heareval's files


class _PredictionsUnpickler(pickle.Unpickler):
    """Loads heareval's predictions pickles (dicts of tensors, lists, strings, numpy scalars) without running
    any other code a pickle could name: tensor storages go through torch's weights-only loader."""

    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            import torch
            return lambda data: torch.load(io.BytesIO(data), weights_only=True)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"heareval predictions may not name {module}.{name}")


def read_predictions(path: Path) -> dict:
    """One of heareval's <split>.predictions.pkl, tensors as numpy arrays."""
    with open(path, "rb") as f:
        data = _PredictionsUnpickler(f).load()
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in data.items()}


def label_vocabulary(task_dir: Path) -> dict[str, int]:
    """{label: index} of a task's labelvocabulary.csv in its order (heareval's label_to_idx; labels as
    strings, as heareval reads them)."""
    with open(Path(task_dir) / "labelvocabulary.csv", newline="") as f:
        return {str(row["label"]): int(row["idx"]) for row in csv.DictReader(f)}


def event_counts(metric: str, predictions: dict, labels: list[str]) -> np.ndarray:
    """(n_files, 3) counts Ntp, Nsys, Nref of each predicted file, from heareval's own sed_eval setup of
    `metric` (an event-based F-measure). heareval scores the files of predicted_events one by one."""
    from heareval.score import EventBasedScore, available_scores

    score = available_scores[metric](label_to_idx={label: i for i, label in enumerate(labels)})
    if not isinstance(score, EventBasedScore) or score.scores[0] != "f_measure":
        raise ValueError(f"{metric} is not an event-based F-measure")
    reference = score.sed_eval_event_container(predictions["target_events"])
    estimated = score.sed_eval_event_container(predictions["predicted_events"])
    rows = []
    for filename in predictions["predicted_events"]:
        counter = score.score_class(event_label_list=labels, **score.params)
        counter.evaluate(reference_event_list=reference.filter(filename=filename),
                         estimated_event_list=estimated.filter(filename=filename))
        rows.append([counter.overall["Ntp"], counter.overall["Nsys"], counter.overall["Nref"]])
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def bootstrap_task(task_dir: Path, metadata: dict, splits: list[str], resamples: int = RESAMPLES,
                   seed: int = SEED) -> tuple[float, dict]:
    """(the score recomputed from the predictions, its bootstrap interval) of an embedded, predicted task."""
    task_dir, metric = Path(task_dir), metadata["evaluation"][0]
    loaded = [read_predictions(task_dir / f"{split}.predictions.pkl") for split in splits]
    if metadata.get("embedding_type") == "event":
        labels = list(label_vocabulary(task_dir))
        return bootstrap_events([event_counts(metric, p, labels) for p in loaded], resamples, seed)
    if metric not in SCENE_METRICS:
        raise ValueError(f"no bootstrap for the scene metric {metric!r}")
    return bootstrap_scene(metric, [(p["prediction"], p["target"]) for p in loaded], resamples, seed)


def task_interval(task_dir: Path, metadata: dict, splits: list[str], score: float, n_test: int,
                  resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """The 95 % interval of a task's test score (the module docstring says how), or None when there is no way
    to one. A bootstrap whose recomputed score differs from heareval's (predictions of another run) is not
    used; the interval then says why in "note"."""
    note = None
    if all((Path(task_dir) / f"{s}.predictions.pkl").is_file() for s in splits):
        try:
            point, interval = bootstrap_task(task_dir, metadata, splits, resamples, seed)
            if abs(point - score) <= 1e-4:
                return interval
            note = f"the predictions give {point:.6f}, heareval's score is {score:.6f}"
        except (OSError, ValueError, KeyError, ImportError, pickle.UnpicklingError) as err:
            note = f"no bootstrap: {type(err).__name__}: {err}"
    else:
        note = "no predictions on disk"
    if metadata["evaluation"][0] in ACCURACY_METRICS and n_test > 0 and 0.0 <= score <= 1.0:
        return {**wilson(score, n_test), "note": note}
    return None
