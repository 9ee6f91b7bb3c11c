"""Evaluation metrics against hand-computed values and an exhaustive reference."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from eval.metrics import aupro, f1_max_threshold, image_auroc, image_f1_max, pixel_auroc


# ------------------------------------------------------------------------------------ image level

def test_image_auroc_perfect_inverted_ties():
    labels = [0, 0, 1, 1]
    assert image_auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5
    # 3 of the 4 (good, anomalous) pairs ordered correctly
    assert image_auroc(labels, [0.1, 0.7, 0.6, 0.9]) == pytest.approx(0.75)


def test_image_metrics_nan_with_one_class():
    assert math.isnan(image_auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(image_auroc([1, 1], [0.1, 0.2]))
    assert math.isnan(image_f1_max([0, 0], [0.1, 0.2]))
    assert math.isnan(image_f1_max([], []))


def test_image_f1_max_hand_computed():
    assert image_f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    # thresholds 0.9: F1 2/3; 0.8: 1/2; 0.7: P=2/3, R=1 -> F1 0.8; 0.1: 2/3
    f1, threshold = f1_max_threshold([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.7)
    # fully inverted: the best is flagging everything (P=1/2, R=1)
    assert image_f1_max([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(2 / 3)


def test_image_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="length"):
        image_auroc([0, 1], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.5, float("nan")])
    with pytest.raises(ValueError, match="labels"):
        image_auroc([0, 2], [0.5, 0.6])


# ------------------------------------------------------------------------------------ pixel AUROC

def test_pixel_auroc_perfect_and_inverted():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    amap = mask.astype(np.float32)
    other = np.zeros((5, 12), bool)  # a normal image of another size
    assert pixel_auroc([mask, other], [amap, np.zeros((5, 12))]) == 1.0
    assert pixel_auroc([mask, other], [1 - amap, np.ones((5, 12))]) == 0.0


def test_pixel_auroc_matches_sklearn_on_concatenated_pixels():
    rng = np.random.default_rng(0)
    shapes = [(20, 30), (11, 9), (16, 16), (7, 40)]
    masks = [rng.random(s) < 0.15 for s in shapes] + [np.zeros((10, 10), bool)]
    maps = [np.round(rng.random(m.shape) + 0.4 * m, 1) for m in masks]  # rounded: many ties
    expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                             np.concatenate([a.ravel() for a in maps]))
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # more anomalous than normal pixels takes the other branch
    inverted = [~m for m in masks]
    expected = roc_auc_score(np.concatenate([m.ravel() for m in inverted]),
                             np.concatenate([a.ravel() for a in maps]))
    assert pixel_auroc(inverted, [a.astype(np.float32) for a in maps]) == pytest.approx(expected, abs=1e-6)


def test_pixel_auroc_nan_and_errors():
    empty = [np.zeros((8, 8), bool)]
    assert math.isnan(pixel_auroc(empty, [np.random.default_rng(0).random((8, 8))]))
    assert math.isnan(pixel_auroc([np.ones((8, 8), bool)], [np.zeros((8, 8))]))
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((8, 8), bool)], [np.zeros((8, 9))])
    with pytest.raises(ValueError, match="masks"):
        pixel_auroc(empty, [])


# ------------------------------------------------------------------------------------ AUPRO

def test_aupro_hand_computed():
    """10 normal pixels scored 0.0..0.9 (one image); one 2-pixel region scored 0.95 and 0.75.

    Curve (FPR, PRO): (0,0) (0,.5) (.1,.5) (.2,.5) (.2,1) (.3,1) ... so the area up to FPR 0.3 is
    0.2 * 0.5 + 0.1 * 1 = 0.2 -> AUPRO 0.2 / 0.3 = 2/3; up to FPR 1: 0.1 + 0.8 = 0.9; up to
    FPR 0.25: 0.1 + 0.05 = 0.15 -> 0.6.
    """
    normal = np.zeros((1, 10), bool)
    normal_map = (np.arange(10) / 10)[None, :]
    region = np.ones((1, 2), bool)
    region_map = np.array([[0.95, 0.75]])
    masks, maps = [normal, region], [normal_map, region_map]
    assert aupro(masks, maps) == pytest.approx(2 / 3)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.9)
    assert aupro(masks, maps, fpr_limit=0.25) == pytest.approx((0.1 + 0.05) / 0.25)
    # invariant to a monotone rescaling and to the map dtype
    assert aupro(masks, [m * 10 + 3 for m in maps]) == pytest.approx(2 / 3)
    assert aupro(masks, [m.astype(np.float32) for m in maps]) == pytest.approx(2 / 3)


def test_aupro_averages_regions_not_pixels_with_8_connectivity():
    normal = np.zeros((1, 10), bool)
    normal_map = (np.arange(10) / 10)[None, :]
    # Region A: two diagonal pixels (one region with 8-connectivity), one high, one low.
    # Region B: one high pixel. PRO above the normal scores = (1/2 + 1) / 2 = 0.75 everywhere
    # in FPR [0, 0.3]; a pixel-weighted overlap would be 2/3, 4-connectivity would give 2/3 too.
    mask = np.zeros((4, 4), bool)
    amap = np.zeros((4, 4))
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True
    amap[0, 0], amap[1, 1], amap[3, 3] = 0.99, -1.0, 0.98
    amap[~mask] = -2.0  # lowest: never flagged within FPR <= 0.3
    value = aupro([normal, mask], [normal_map, amap])
    assert value == pytest.approx(0.75)


def test_aupro_perfect_random_and_nan():
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    mask[12:14, 1:3] = True
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)
    assert aupro([mask], [np.full((16, 16), 0.3)]) == pytest.approx(0.15)  # diagonal: 0.3 / 2
    assert aupro([mask], [1.0 - mask]) == pytest.approx(0.0)
    assert math.isnan(aupro([np.zeros((8, 8), bool)], [np.ones((8, 8))]))
    assert math.isnan(aupro([np.ones((8, 8), bool)], [np.ones((8, 8))]))
    assert math.isnan(aupro([], []))
    with pytest.raises(ValueError):
        aupro([mask], [mask.astype(float)], fpr_limit=0.0)


def _reference_aupro(masks, maps, fpr_limit):
    """Exhaustive MVTec AUPRO: every distinct score is a threshold."""
    normal = np.concatenate([a[~m] for m, a in zip(masks, maps)])
    regions = []
    for m, a in zip(masks, maps):
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [a[labels == i] for i in range(1, n)]
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        points.append((np.mean(normal >= t), np.mean([np.mean(r >= t) for r in regions])))
    points.append((1.0, 1.0))
    fpr, pro = map(np.array, zip(*points))
    keep = fpr <= fpr_limit
    x, y = list(fpr[keep]), list(pro[keep])
    if x[-1] < fpr_limit:
        j = int(np.argmax(fpr > fpr_limit))
        y.append(pro[j - 1] + (pro[j] - pro[j - 1]) * (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1]))
        x.append(fpr_limit)
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / fpr_limit


def test_aupro_matches_exhaustive_reference_on_quantised_maps():
    rng = np.random.default_rng(1)
    masks, maps = [], []
    for shape in [(24, 24), (18, 30), (20, 20), (12, 25)]:
        mask = np.zeros(shape, bool)
        for _ in range(2):
            y, x = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
            mask[y:y + rng.integers(2, 5), x:x + rng.integers(2, 5)] = True
        masks.append(mask)
        maps.append(np.round(rng.random(shape) * 0.8 + 0.3 * mask, 2))  # 2 decimals: exact thresholds
    masks.append(np.zeros((10, 10), bool))
    maps.append(np.round(rng.random((10, 10)), 2))
    for limit in (0.05, 0.3, 1.0):
        expected = _reference_aupro(masks, maps, limit)
        assert aupro(masks, maps, fpr_limit=limit, num_thresholds=2000) == pytest.approx(expected, abs=1e-9)
    # with the default 200 thresholds the binned curve stays close
    assert aupro(masks, maps) == pytest.approx(_reference_aupro(masks, maps, 0.3), abs=0.02)
