"""The latency benchmark's stage timings on the real embedded engine (figures are printed by
`anomaly-assistant bench`, not asserted: only that each stage is measured and adds up)."""
from __future__ import annotations

from assistant.engine import AnomalyEngine
from eval.benchmark import benchmark_images, stage_times


def test_stage_times_with_and_without_references():
    engine = AnomalyEngine("embedded")
    images = benchmark_images(None, 3)
    references = engine.references(images[2:])
    for refs in (references, None):  # few-shot and zero-shot
        row = stage_times(engine, images[:2], refs, batch=2, repeats=1)
        assert row["features_ms"] > 0 and row["map_ms"] > 0
        assert abs(row["total_ms"] - row["features_ms"] - row["map_ms"]) < 1e-6
