"""Anomaly-detection metrics: image AUROC / F1-max, judgement (balanced) accuracy, pixel AUROC and AUPRO.

Every function returns a fraction in 0..1 (callers convert to percent) or float('nan') when the
metric is undefined (a single class, no anomalous pixels or regions). Pixel metrics take a sequence
of boolean HxW masks and float HxW maps with matching shapes; images may differ in size. They stream
over the images so ~600 maps of 512x512 need only a few hundred MB at most.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from sklearn.metrics import auc, balanced_accuracy_score, precision_recall_curve, roc_auc_score

NAN = float("nan")


def _image_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length ({labels.size} vs {scores.size})")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    if not np.all(np.isin(labels, (0, 1))):
        raise ValueError("labels must be 0 (good) or 1 (anomalous)")
    return labels.astype(np.int64), scores


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (higher = more anomalous); nan with one class."""
    labels, scores = _image_inputs(labels, scores)
    if np.unique(labels).size < 2:
        return NAN
    return float(roc_auc_score(labels, scores))


def f1_max_threshold(labels, scores) -> tuple[float, float]:
    """(best F1, the score threshold reaching it; predict anomalous when score >= threshold)."""
    labels, scores = _image_inputs(labels, scores)
    if np.unique(labels).size < 2:
        return NAN, NAN
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def image_f1_max(labels, scores) -> float:
    """Best F1 over all score thresholds (sklearn precision_recall_curve); nan with one class."""
    return f1_max_threshold(labels, scores)[0]


def balanced_accuracy(labels, decisions) -> float:
    """Mean of the share of good images passed and of anomalous images flagged: the accuracy of the
    yes/no a user reads, on a set with as many good as anomalous images; nan with one class."""
    labels = np.asarray(labels).ravel().astype(np.int64)
    decisions = np.asarray(decisions).ravel().astype(bool)
    if np.unique(labels).size < 2:
        return NAN
    return float(balanced_accuracy_score(labels, decisions))


def _pixel_pairs(masks: Sequence, maps: Sequence):
    """Yield (bool mask, float32/float64 map) per image after checking lengths, shapes and values."""
    if len(masks) != len(maps):
        raise ValueError(f"got {len(masks)} masks but {len(maps)} maps")
    for i, (mask, amap) in enumerate(zip(masks, maps)):
        mask = np.asarray(mask)
        amap = np.asarray(amap)
        if amap.dtype not in (np.float32, np.float64):
            amap = amap.astype(np.float64)
        if mask.ndim != 2 or mask.shape != amap.shape:
            raise ValueError(f"image {i}: mask shape {mask.shape} and map shape {amap.shape} must be the same HxW")
        if not np.all(np.isfinite(amap)):
            raise ValueError(f"image {i}: anomaly map contains NaN or infinite values")
        yield (mask > 0 if mask.dtype != bool else mask), amap


def pixel_auroc(masks: Sequence, maps: Sequence) -> float:
    """ROC AUC over all pixels of all images (masks = positives); nan without both pixel classes.

    Exact, with ties counted half (the same value as sklearn's roc_auc_score on the concatenated
    pixels), computed as the Mann-Whitney statistic: the smaller pixel class is sorted once and
    the other is streamed image by image, so memory does not grow with the whole pixel count.
    """
    n_pos = n_neg = 0
    for mask, _ in _pixel_pairs(masks, maps):
        positives = int(np.count_nonzero(mask))
        n_pos, n_neg = n_pos + positives, n_neg + mask.size - positives
    if n_pos == 0 or n_neg == 0:
        return NAN
    sort_pos = n_pos <= n_neg  # sort the smaller class
    ref = np.sort(np.concatenate([amap[mask if sort_pos else ~mask] for mask, amap in _pixel_pairs(masks, maps)]))
    # wins = #(pos > neg) + 0.5 * #(pos == neg) over all pairs. Sorted queries search much faster.
    wins = 0.0
    for mask, amap in _pixel_pairs(masks, maps):
        other = np.sort(amap[~mask if sort_pos else mask])
        left = np.searchsorted(ref, other, side="left")
        right = np.searchsorted(ref, other, side="right")
        ties = float((right - left).sum())
        if sort_pos:  # other = negatives: count the positives above each
            wins += float((ref.size - right).sum()) + 0.5 * ties
        else:  # other = positives: count the negatives below each
            wins += float(left.sum()) + 0.5 * ties
    return wins / (float(n_pos) * float(n_neg))


def _f64(lo: float, hi: float) -> tuple[np.float64, np.float64]:
    """A histogram range that keeps numpy's bin edges in float64 even for float32 maps."""
    return np.float64(lo), np.float64(hi)


def aupro(masks: Sequence, maps: Sequence, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (MVTec AD AUPRO).

    Regions are the 8-connected components of each ground-truth mask. For a threshold t (pixel
    anomalous when map >= t), PRO(t) is the mean over all regions of all images of the fraction of
    the region's pixels above t; FPR(t) is the share of normal pixels (outside every mask, all
    images) above t. The curve, starting at (0, 0), is integrated with the trapezoidal rule over
    FPR in [0, fpr_limit] (linearly interpolated at the limit) and divided by `fpr_limit`, so 1.0
    is perfect and an uninformative map scores about fpr_limit / 2.

    The `num_thresholds` thresholds are spaced evenly between the score where FPR reaches
    `fpr_limit` (found from a fine histogram of normal scores) and the highest score, so they all
    fall inside the integrated range. Each threshold is applied via per-image bin counts, never as
    a thresholds x pixels matrix. nan when there is no anomalous region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    lo, hi, n_normal, any_region = np.inf, -np.inf, 0, False
    for mask, amap in _pixel_pairs(masks, maps):
        if amap.size:
            lo, hi = min(lo, float(amap.min())), max(hi, float(amap.max()))
        n_normal += int(mask.size - np.count_nonzero(mask))
        any_region = any_region or bool(mask.any())
    if n_normal == 0 or not any_region:
        return NAN

    # Lowest threshold: the largest fine-histogram edge whose FPR is still >= fpr_limit.
    start = lo
    if hi > lo and fpr_limit < 1.0:
        fine = np.zeros(10_000, dtype=np.int64)
        for mask, amap in _pixel_pairs(masks, maps):
            fine += np.histogram(amap[~mask], bins=fine.size, range=_f64(lo, hi))[0]
        edges = np.histogram_bin_edges(np.empty(0), bins=fine.size, range=_f64(lo, hi))
        at_or_above = np.cumsum(fine[::-1])[::-1]  # normal pixels >= edges[i]
        enough = np.nonzero(at_or_above >= fpr_limit * n_normal)[0]
        start = float(edges[enough[-1]]) if enough.size else lo
    # Thresholds t_k = the first K edges of K equal bins whose edge K-1 is the top score; numpy's
    # equal-bin histogram puts v in bin k exactly when t_k <= v < t_k+1 (values below t_0 drop out).
    k = num_thresholds
    end = hi + (hi - start) / (k - 1) if hi > start else hi + 1.0
    fp_bins = np.zeros(k, dtype=np.float64)
    pro_bins = np.zeros(k, dtype=np.float64)
    n_regions = 0
    for mask, amap in _pixel_pairs(masks, maps):
        fp_bins += np.histogram(amap[~mask], bins=k, range=_f64(start, end))[0]
        if mask.any():
            n_lab, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
            n_regions += n_lab - 1
            sizes = np.bincount(labels.ravel(), minlength=n_lab).astype(np.float64)
            weight = 1.0 / sizes[labels[mask]]  # each region's pixels sum to 1
            pro_bins += np.histogram(amap[mask], bins=k, range=_f64(start, end), weights=weight)[0]
    fpr = np.clip(np.cumsum(fp_bins[::-1])[::-1] / n_normal, 0.0, 1.0)  # [k]: share >= t_k
    pro = np.clip(np.cumsum(pro_bins[::-1])[::-1] / n_regions, 0.0, 1.0)

    # Descending thresholds give ascending FPR; add the ends "nothing flagged" and "everything".
    fpr = np.concatenate([[0.0], fpr[::-1], [1.0]])
    pro = np.concatenate([[0.0], pro[::-1], [1.0]])
    last = int(np.nonzero(fpr <= fpr_limit)[0][-1])
    x, y = fpr[: last + 1], pro[: last + 1]
    if x[-1] < fpr_limit:  # interpolate PRO at the limit between the last point inside and the next
        x0, x1, y0, y1 = fpr[last], fpr[last + 1], pro[last], pro[last + 1]
        x, y = np.append(x, fpr_limit), np.append(y, y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0))
    return float(auc(x, y) / fpr_limit)
