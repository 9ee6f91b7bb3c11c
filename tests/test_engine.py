"""The detection engine on real images: embedded weights, open_clip taps, maps, threshold, regions."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from assistant.encoders import create_encoder
from assistant.encoders.embedded import efficientnet_weights_path
from assistant.encoders.openclip import evenly_spaced_blocks
from assistant.answer import closing_note, facts_sentence, grounded_answer
from assistant.config import load_preset
from assistant.engine import AnomalyEngine, EngineError
from assistant.evidence import MAX_REFERENCES, candidate_views
from assistant.images import load_mask
from assistant.prompts import load
from assistant.maps.anomaly_map import find_regions, interior_peaks, position_word
from assistant.maps.memory_bank import (MemoryBank, greedy_coreset, nearest_similarity, patches, random_subset,
                                        self_distance, similarity_dtype)
from assistant.reference_set import ReferenceSet
from assistant.scorers import GlobalStatsScorer, TextureScorer, held_out_folds


def open_rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def textile_images() -> list[Image.Image]:
    """Real nominal textile photos from the MIT conformal-clip-data set (a PyPI package)."""
    data = pytest.importorskip("conformal_clip_data")
    paths = sorted(data.nominal_dir().glob("*.jpg"))[:4]
    return [open_rgb(p) for p in paths]


def untrained_engine(overrides: dict | None = None) -> AnomalyEngine:
    """The embedded preset with `overrides` merged in, without the shipped text-map checkpoint."""
    return AnomalyEngine(load_preset("embedded", overrides), checkpoint_dir="/nonexistent-untrained")


@pytest.fixture(scope="module")
def engine():
    return untrained_engine()


def with_blot(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A dark stain with a bright rim: an obvious local defect on a texture."""
    array = np.asarray(image).copy()
    x0, y0, x1, y1 = box
    array[y0:y1, x0:x1] = 255
    array[y0 + 3:y1 - 3, x0 + 3:x1 - 3] = 0
    return Image.fromarray(array)


def test_embedded_weights_are_the_wheels_imagenet_weights():
    encoder = create_encoder({"kind": "embedded", "image_size": 224})
    source = torch.load(efficientnet_weights_path("tf_efficientnet_lite0"), weights_only=True)
    assert torch.equal(encoder.backbone.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(encoder.backbone.state_dict()["bn1.running_var"], source["_bn0.running_var"])


def test_embedded_encoder_gives_four_levels_and_text(textile_images):
    encoder = create_encoder({"kind": "embedded", "image_size": 256})
    out = encoder.encode_images(textile_images[:2])
    assert [tuple(level.shape[-2:]) for level in out.levels] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert [level.shape[1] for level in out.levels] == encoder.level_dims
    assert out.embedding.shape == (2, encoder.embed_dim)
    text = encoder.encode_text(["a photo of a flawless textile.", "a photo of a damaged textile."])
    assert text.shape == (2, 384)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-4)


def test_open_clip_encoder_taps_evenly_spaced_blocks(textile_images):
    assert evenly_spaced_blocks(32) == [7, 15, 23, 31]
    encoder = create_encoder({"kind": "open_clip", "model": "ViT-B-32", "pretrained": None})
    assert encoder.blocks == [2, 5, 8, 11]
    out = encoder.encode_images(textile_images[:1])
    assert len(out.levels) == 4 and all(level.shape == (1, 768, 7, 7) for level in out.levels)
    assert encoder.encode_text(["a photo"]).shape == (1, encoder.text_dim)
    weights = encoder.default_adapter_weights()
    assert weights is not None and weights[0].shape == (encoder.text_dim, 768)


def test_open_clip_rejects_bad_blocks_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="blocks"):
        create_encoder({"kind": "open_clip", "model": "ViT-B-32", "blocks": [1, 2, 3, 99]})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_encoder({"kind": "open_clip", "model": "ViT-B-32", "pretrained": str(tmp_path / "missing.pt")})


def test_defect_is_found_where_it_is(engine, textile_images):
    reference, query = textile_images[0], textile_images[1]
    defective = with_blot(query, (24, 176, 42, 194))  # bottom left of a 250x250 image
    normal = engine.detect(query, [reference], "textile")
    anomalous = engine.detect(defective, [reference], "textile")
    assert anomalous.score > normal.score
    assert anomalous.anomalous and not normal.anomalous
    assert anomalous.regions and anomalous.regions[0].position == "bottom left"
    x0, y0, x1, y1 = anomalous.regions[0].box
    assert x0 < 42 and x1 > 24 and y0 < 194 and y1 > 176
    assert anomalous.anomaly_map.shape == (250, 250)
    assert normal.regions == []


def test_same_references_same_threshold_and_cache(engine, textile_images):
    first = engine.references(textile_images[:2], "textile")
    second = engine.references([im.copy() for im in textile_images[:2]], "textile")
    assert first is second  # cached by content
    assert first.threshold > 0 and len(first.normal_scores) == 2  # leave-one-out over 2 references


def test_one_surface_reference_only_estimates_its_threshold(engine, textile_images):
    """Its flipped views cannot show how much normal parts differ, so the answer says the threshold
    is a guess and asks for a second reference, which measures it (leave-one-out)."""
    from assistant.app_ui import verdict_html

    query = textile_images[3]
    one = engine.detect(query, textile_images[:1], "textile")
    two = engine.detect(query, textile_images[:2], "textile")
    chosen = engine.detect(query, textile_images[:1], "textile", threshold=2.0)
    assert one.threshold_estimated and not two.threshold_estimated and not chosen.threshold_estimated
    advice = load("answers")["estimated_threshold"]
    assert closing_note("judgement", one) == advice == closing_note("confidence", one)
    assert closing_note("where", one, follow_up=True) == ""
    assert closing_note("judgement", two) == "" == closing_note("confidence", chosen)
    assert "estimated" in verdict_html(one) and "estimated" not in verdict_html(two)


def test_zero_shot_verdict_says_its_threshold_is_not_measured(engine, textile_images):
    """Without references one fixed threshold serves every kind of part (zero-shot judgement accuracy
    is at or below the "always yes" rate on tire and magnetic tile), so the answer asks for a reference."""
    from assistant.app_ui import verdict_html

    query = textile_images[3]
    zero = engine.detect(query, None, "textile")
    chosen = engine.detect(query, None, "textile", threshold=2.0)
    assert zero.mode == "zero-shot" and zero.threshold_estimated and not chosen.threshold_estimated
    advice = load("answers")["zero_shot_threshold"]
    assert closing_note("judgement", zero) == advice == closing_note("advice", zero)
    assert closing_note("describe", zero) == "" == closing_note("judgement", chosen)
    assert "one surface reference" not in verdict_html(zero)


def test_one_object_reference_measures_its_threshold(engine, tire_dir):
    """Objects are scored relative to their own mean level, so flipped views of one reference
    already differ as two photos of normal parts do."""
    reference = open_rgb(sorted((tire_dir / "train" / "good").iterdir())[0])
    query = open_rgb(sorted((tire_dir / "test" / "good").iterdir())[0])
    detection = engine.detect(query, [reference], "tire")
    assert engine.references([reference], "tire").relative and not detection.threshold_estimated


def test_a_copy_of_the_reference_is_normal(engine, tire_dir, magnetic_tile_dir):
    """The reference photo asked about itself: its map is ~0 everywhere, which a relative map must not
    divide into defects (the mean floor), for an object as for a surface."""
    for folder, name in ((tire_dir, "tire"), (magnetic_tile_dir, "magnetic tile")):
        reference = open_rgb(sorted((folder / "train" / "good").iterdir())[0])
        detection = engine.detect(reference.copy(), [reference], name)
        assert not detection.anomalous and detection.score < 0.5 * detection.threshold, (name, detection.score)


def test_reference_views_turn_objects_within_the_budget(engine):
    """One reference of an object is turned 12 times (x 2 flips), four references 3 times each, 64
    share the preset's plain augmentations as far as the view budget allows; a surface is never turned."""
    names, per_image = engine.bank.reference_views(1, relative=True)
    assert len(names) == 24 and per_image == 2 and "hflip+rot330" in names
    names, per_image = engine.bank.reference_views(4, relative=True)
    assert names == [f"{flip}+rot{angle}" for flip in ("identity", "hflip") for angle in (0, 120, 240)]
    pooled = engine.bank.cfg["augmentations"]
    assert engine.bank.cfg["view_budget"] == 64 and len(pooled) == 4
    assert engine.bank.reference_views(1, relative=False) == (pooled, 0)
    assert engine.bank.reference_views(16, relative=False) == (pooled, 0)
    assert engine.bank.reference_views(32, relative=True) == (pooled[:2], 0)
    assert engine.bank.reference_views(64, relative=True) == (pooled[:1], 0)
    assert engine.bank.reference_views(256, relative=False) == (pooled[:1], 0)


def test_self_similarity_stops_at_many_references_but_not_for_tiles(engine):
    """Up to `self_max_references` references a patch may also match its own image; from there on the
    references show the variation themselves. Tiles of one image are not many references."""
    from assistant import tiling

    cap = engine.bank.cfg["self_max_references"]
    radius = engine.bank.cfg["self_radius"]
    assert radius > 0 and engine.bank.new_bank(0, n_images=1).self_radius == radius
    assert engine.bank.new_bank(0, n_images=cap).self_radius == radius
    assert engine.bank.new_bank(0, n_images=cap + 1).self_radius == 0
    assert tiling.tile_engine(engine).bank.new_bank(0, n_images=200).self_radius == radius


def test_many_references_compare_a_query_with_the_views_nearest_it(engine, tire_dir):
    """Above `nearest_views` references a query meets the views of the references most like it,
    whole, instead of a coreset of all of them: a photo of the set picks its own view first. Up to
    that count, and for the tiles of a large image, every view stays in the bank."""
    from assistant import tiling

    nearest = 4
    engine = engine.with_settings({"memory_bank": {"nearest_views": nearest}})
    # 8 photos: too many to turn within the pose budget, so the bank pools their views
    photos = [open_rgb(path) for path in sorted((tire_dir / "train" / "good").iterdir())[:2 * nearest]]
    references = engine.references(photos, "tire")
    bank = references.bank
    assert bank.nearest_views == nearest and bank.views_apart and not bank.banks
    n_views = len(engine.bank.reference_views(len(photos), relative=True)[0])
    assert len(bank.view_banks) == n_views * len(photos)
    view, _ = engine.prepare(photos[3])
    levels = engine.encoder.encode_images([view]).levels
    chosen = bank.views_for(levels)
    assert len(chosen) == nearest and chosen[0] == 3 * n_views  # photo 3 as photographed
    searched = candidate_views(levels, len(photos), references)  # the evidence looks where the bank did
    assert len(searched) == min(nearest, MAX_REFERENCES) and searched[0] == (3, "identity")
    assert engine.bank.new_bank(0, n_images=nearest).nearest_views == 0
    assert tiling.tile_engine(engine).bank.new_bank(0, n_images=200).nearest_views == 0
    query = open_rgb(sorted((tire_dir / "test" / "good").iterdir())[0])
    assert engine.detect(query, references, "tire").score < references.threshold


def test_a_turned_tire_is_matched_against_turned_views_of_its_reference(tire_dir):
    """A normal tire photographed at another angle: against the reference's turned views it scores
    lower (in threshold units) than against the reference's flips alone."""
    from assistant.foreground import rotate_image

    reference = open_rgb(sorted((tire_dir / "train" / "good").iterdir())[0])
    query = Image.fromarray(rotate_image(np.asarray(open_rgb(sorted((tire_dir / "test" / "good").iterdir())[1])), 100))
    turned = untrained_engine()
    flat = untrained_engine({"memory_bank": {"pose": None}})
    ratios = {}
    for name, candidate in (("turned", turned), ("flat", flat)):
        detection = candidate.detect(query, [reference], "tire")
        ratios[name] = detection.score / detection.threshold
    assert ratios["turned"] < ratios["flat"] and ratios["turned"] < 1.0, ratios


def test_many_references_are_held_out_in_folds(textile_images):
    engine = untrained_engine()
    folds = held_out_folds(n_images=7, n_views=4, max_folds=engine.threshold_cfg["held_out_folds"])
    assert len(folds) == 5  # the preset's cap, not one bank per reference
    assert sorted(v for fold in folds for v in fold) == list(range(28))
    assert all(len({v // 4 for v in fold}) * 4 == len(fold) for fold in folds)  # whole images only
    engine.threshold_cfg["held_out_folds"] = 2
    references = engine.references(textile_images, "textile")
    assert len(references.normal_scores) == 4 and references.normal_scores.max() == pytest.approx(1.0)


def test_scorers_own_disjoint_reference_fields_and_their_terms_add_up(engine, textile_images):
    """Each scorer fits its own fields of the reference set, and the engine's map and score are the
    sums of the scorers' terms: the bank's map and peak, the texture map (surfaces: map only), the
    texture statistics (surfaces: score only)."""
    from dataclasses import fields

    views = engine.encode_references(textile_images[:2], "textile", 0)
    owned = [set(scorer.fit(views)) for scorer in engine.scorers]
    assert all(not (a & b) for i, a in enumerate(owned) for b in owned[i + 1:]), owned
    assert set().union(*owned) <= {field.name for field in fields(ReferenceSet)}
    references = engine.references(textile_images[:2], "textile")
    query = engine.encode([with_blot(textile_images[2], (24, 120, 90, 194))])
    terms = [scorer.assess(query, references, None) for scorer in engine.scorers]
    (bank_map, bank_score), (texture_map, texture_score), (stats_map, stats_score), colour_terms = terms
    assert texture_score is None and stats_map is None and texture_map.max() > 0
    assert colour_terms == (None, None)  # a surface: colour is judged on objects only
    maps, scores = engine.assess(query, references, "textile")
    np.testing.assert_array_equal(maps, bank_map + texture_map)
    np.testing.assert_array_equal(scores, bank_score + stats_score)
    assert scores[0] > references.threshold


def test_one_reference_texture_term_lifts_global_weave_changes(engine):
    """A finer weave over the whole image matches the reference patch by patch; with one reference
    only texture statistics can see it: the tile statistics in the score, in units of the
    reference's own tile spread, and (partly) the window statistics of the texture map."""
    data = pytest.importorskip("conformal_clip_data")
    nominal = sorted(data.nominal_dir().glob("*.jpg"))
    queries = nominal[:12] + sorted(data.global_dir().glob("*.jpg"))[:12]
    labels = [0] * 12 + [1] * 12
    patch_maps_only = AnomalyEngine({**engine.preset, "anomaly_map": {k: v for k, v in engine.map_cfg.items() if k != "texture_map"}},
                                    checkpoint_dir="/nonexistent-untrained")
    encoded = engine.encode_each([engine.prepare(open_rgb(p))[0] for p in queries])
    with_term, peak_only, texture_map_peaks = [], [], []
    for path in nominal[-3:]:  # three references the test images are not
        reference = patch_maps_only.references([open_rgb(path)], "textile")
        assert reference.stats.grid == 2 and reference.global_unit > 0 and reference.texture_normal == 0.5
        assessed = [patch_maps_only.assess(one, reference, "textile") for one in encoded]
        scores = np.array([float(s[0]) for _, s in assessed])
        peaks = np.array([float(patch_maps_only.bank.peaks(m)[0]) for m, _ in assessed])
        assert (scores >= peaks - 1e-6).all()  # the term only adds
        with_term.append(roc_auc_score(labels, scores))
        peak_only.append(roc_auc_score(labels, peaks))
        with_texture_map = engine.references([open_rgb(path)], "textile")
        surface_maps = [engine.assess(one, with_texture_map, "textile")[0] for one in encoded]
        texture_map_peaks.append(roc_auc_score(labels, [float(engine.bank.peaks(m)[0]) for m in surface_maps]))
    assert np.mean(peak_only) < 0.6 < 0.75 < np.mean(with_term)
    assert np.mean(texture_map_peaks) > np.mean(peak_only) + 0.05


def texture_statistics_terms(chosen: AnomalyEngine, references: ReferenceSet, encoded) -> list[float]:
    """What the texture-statistics scorer of `chosen` adds to each encoded image's score."""
    scorer = next(one for one in chosen.scorers if isinstance(one, GlobalStatsScorer))
    return [float(scorer.assess(one, references, None)[1][0]) for one in encoded]


def test_texture_statistics_know_the_surface_turned_by_right_angles(engine):
    """An anisotropic weave turned by 90 degrees moves every channel statistic although nothing is
    wrong; statistics fitted on the reference's turned views as well leave a turned normal textile
    where the upright one is, while statistics of the photo as taken put it far above the threshold.
    The unit stays the reference's own tile spread, as photographed."""
    data = pytest.importorskip("conformal_clip_data")
    nominal = [open_rgb(p) for p in sorted(data.nominal_dir().glob("*.jpg"))]
    reference, queries = [nominal[-1]], nominal[:5]
    as_taken = untrained_engine({"anomaly_map": {"texture": {"turns": [], "cap": None}}})
    turned_set, plain_set = engine.references(reference, "textile"), as_taken.references(reference, "textile")
    assert turned_set.global_unit == pytest.approx(plain_set.global_unit)
    assert len(turned_set.stats.references[0][0]) == 4 * len(plain_set.stats.references[0][0])  # 4 turns x tiles

    def texture_terms(chosen: AnomalyEngine, references, images) -> np.ndarray:
        return np.array(texture_statistics_terms(chosen, references, chosen.encode_each(
            [chosen.prepare(image)[0] for image in images])))

    turned = [image.transpose(Image.Transpose.ROTATE_90) for image in queries]
    upright = texture_terms(engine, turned_set, queries)
    assert texture_terms(engine, turned_set, turned).mean() < upright.mean() + 0.1
    assert texture_terms(as_taken, plain_set, turned).mean() > upright.mean() + 0.4


def test_a_texture_cap_bounds_what_a_capture_change_adds(textile_images):
    """A blurred photo moves every texture statistic; `texture.cap` bounds the term it adds (in
    threshold units) so the map still ranks such photos, and leaves a small term as it was."""
    from PIL import ImageFilter

    unbounded = untrained_engine({"anomaly_map": {"texture": {"cap": None}}})
    capped = untrained_engine({"anomaly_map": {"texture": {"cap": 0.5}}})
    references = unbounded.references(textile_images[:2], "textile")
    blurred = textile_images[3].filter(ImageFilter.GaussianBlur(3))
    encoded = unbounded.encode_each([unbounded.prepare(image)[0] for image in (textile_images[2], blurred)])

    plain, moved = texture_statistics_terms(unbounded, references, encoded)
    plain_capped, moved_capped = texture_statistics_terms(capped, references, encoded)
    assert moved > 1.0 and moved_capped == pytest.approx(0.5)
    assert plain < 0.5 and plain_capped == pytest.approx(plain)


def test_only_the_first_references_within_the_turn_budget_are_turned(textile_images):
    """Turned views cost an encoding each; `turn_budget` bounds them over all references, and a turn
    the bank already holds (rot180) is its view, not a second encoding."""
    budget = untrained_engine({"anomaly_map": {"texture": {"turn_budget": 6}}})
    views = budget.encode_references(textile_images[:3], "textile", 0)
    assert [len(turned) for turned in views.turned] == [3, 3, 0]
    bank_rot180 = views.per_view[budget.bank.cfg["augmentations"].index("rot180")]
    assert views.turned[0][1] is bank_rot180
    assert len(views.texture_views()) == 3 + 6 and len(views.texture_views([2])) == 1


def test_a_surface_bank_cut_to_one_view_per_image_pools_the_turned_views(textile_images):
    """Where the view budget leaves one view per reference, a weave turned by 90 degrees meets no
    upright patch like it; the turned views the texture statistics fit on join the bank (encoded
    once, for both) and a turned normal textile's patches find near matches again. With every
    augmentation pooled the bank is what it was."""
    def engine_with(turned_views: bool, view_budget: int) -> AnomalyEngine:
        return untrained_engine({"memory_bank": {"turned_views": turned_views, "view_budget": view_budget}})

    references = textile_images[:2]
    with_turns, without_turns = engine_with(True, 2), engine_with(False, 2)
    pooled_sets = [chosen.references(references, "textile") for chosen in (with_turns, without_turns)]
    assert pooled_sets[0].bank.banks[0].shape[0] == 4 * pooled_sets[1].bank.banks[0].shape[0]  # 1 + 3 turns

    def mean_distance(chosen: AnomalyEngine, reference_set: ReferenceSet, image: Image.Image) -> float:
        return float(chosen.bank.distance_maps(chosen.encode([chosen.prepare(image)[0]]), reference_set.bank).mean())

    query = textile_images[3]
    turned = query.transpose(Image.Transpose.ROTATE_90)
    upright = mean_distance(without_turns, pooled_sets[1], query)
    assert mean_distance(without_turns, pooled_sets[1], turned) > upright + 0.005
    assert mean_distance(with_turns, pooled_sets[0], turned) < upright

    full = [engine_with(flag, 64).references(references, "textile").bank.banks[0].shape[0] for flag in (True, False)]
    assert full[0] == full[1]


def test_a_texture_only_anomaly_points_at_the_whole_surface(engine):
    """When only the texture term crosses the threshold, no area of the map is anomalous: the answer
    must say the whole part changed instead of boxing an arbitrary hot spot."""
    data = pytest.importorskip("conformal_clip_data")
    reference = [open_rgb(sorted(data.nominal_dir().glob("*.jpg"))[-3])]
    query = open_rgb(sorted(data.global_dir().glob("*.jpg"))[4])
    maps, scores = engine.assess(engine.encode([engine.prepare(query)[0]]), engine.references(reference, "textile"), "textile")
    peak, score = float(maps.max()), float(scores[0])
    assert score > peak  # the texture term adds to this one
    between = engine.detect(query, reference, "textile", threshold=(peak + score) / 2)
    assert between.anomalous and [r.position for r in between.regions] == ["whole surface"]
    assert between.regions[0].area_fraction == 1.0
    assert "whole textile differs" in grounded_answer("where", between)
    assert "whole textile differs" in facts_sentence(between)  # what the LLM is told
    below_peak = engine.detect(query, reference, "textile", threshold=0.9 * peak)
    assert below_peak.anomalous and "whole surface" not in [r.position for r in below_peak.regions]


def test_low_precision_similarity_matches_float32(textile_images):
    with pytest.raises(ValueError, match="precision"):
        similarity_dtype("half", torch.device("cpu"))
    encoder = create_encoder({"kind": "embedded", "image_size": 256})
    levels = encoder.encode_images(textile_images[:3]).levels
    views = [[level[i:i + 1] for level in levels] for i in range(2)]
    query = [level[2:3] for level in levels]
    exact, fast = (MemoryBank([1, 2], pool=1, self_radius=2, precision=p).fit_features(views).distance_maps(query)
                   for p in ("float32", "bfloat16"))
    for a, b in zip(exact, fast):
        assert b.dtype == torch.float32
        assert (a - b).abs().max() < 0.01 < a.mean()


def test_zero_shot_finds_a_defect_from_the_image_alone(engine, textile_images):
    """No references and untrained adapters: the weave vouches for itself, the blot does not."""
    assert not engine.text_map.trained
    query = textile_images[1]
    normal = engine.detect(query, class_name="textile")
    anomalous = engine.detect(with_blot(query, (24, 176, 42, 194)), class_name="textile")
    assert normal.mode == anomalous.mode == "zero-shot"
    assert anomalous.score > normal.score and anomalous.anomalous
    assert anomalous.regions[0].position == "bottom left"


def test_zero_shot_leaves_a_blank_part_alone(engine):
    """A plain grey image has nothing that stands out; only border effects remain, and they must not
    be divided into defects in every corner."""
    detection = engine.detect(Image.new("RGB", (300, 300), (128, 128, 128)), class_name="plate")
    assert not detection.anomalous and detection.regions == []


def test_zero_shot_without_a_self_map_needs_a_trained_text_map(textile_images):
    engine = untrained_engine({"anomaly_map": {"zero_shot_self_radius": 0}})
    with pytest.raises(EngineError, match="reference"):
        engine.detect(textile_images[0])


def test_regions_and_position_words():
    anomaly_map = np.zeros((90, 90), np.float32)
    anomaly_map[5:15, 70:85] = 1.0
    anomaly_map[40:50, 40:50] = 0.8
    regions = find_regions(anomaly_map, 0.5)
    assert [r.position for r in regions] == ["top right", "center"]
    assert regions[0].box == (70, 5, 85, 15)
    assert position_word(10, 80, 90, 90) == "bottom left"


def test_interior_peaks_skip_the_border_unless_nothing_is_left():
    maps = np.zeros((2, 10, 12), np.float32)
    maps[:, 0, 5] = 9.0  # a hot edge cell
    maps[:, 2, 2] = 0.5  # just inside a border of 2
    maps[1, 5, 6] = 0.75
    assert interior_peaks(maps, 0).tolist() == [9.0, 9.0]
    assert interior_peaks(maps, 2).tolist() == [0.5, 0.75]
    assert interior_peaks(maps, 3).tolist() == [0.0, 0.75]
    assert interior_peaks(maps, 5).tolist() == [9.0, 9.0]  # a 10-cell map has no interior 5 cells in


def test_coreset_keeps_size_and_covers_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=generator) * 10
    bank = torch.cat([c + 0.1 * torch.randn(200, 16, generator=generator) for c in centres])
    core = greedy_coreset(bank, 20)
    assert core.shape == (20, 16)
    nearest_centre = torch.cdist(core, centres).argmin(dim=1)
    assert set(nearest_centre.tolist()) == set(range(5))


def test_blocked_searches_match_a_whole_matrix_search():
    """Blocks smaller than both sides and sizes that are no multiple of them: the same nearest
    patches, and the same coreset as a k-centre greedy over plain distances."""
    generator = torch.Generator().manual_seed(2)
    queries = torch.nn.functional.normalize(torch.randn(700, 24, generator=generator), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(2500, 24, generator=generator), dim=1)
    expected = (queries @ bank.T).amax(dim=1)
    assert torch.allclose(nearest_similarity(queries, bank, rows=256, columns=300), expected, atol=1e-6)
    assert torch.allclose(nearest_similarity(queries, bank), expected, atol=1e-6)

    feature = torch.randn(2, 24, 9, 11, generator=generator)
    flat = [patches(feature[b:b + 1]) for b in range(2)]
    cells = torch.tensor([(r, c) for r in range(9) for c in range(11)])
    far = (cells[:, None] - cells[None]).abs().amax(dim=-1) > 2
    brute = torch.stack([1 - (f @ f.T).masked_fill(~far, -2).amax(dim=1).reshape(9, 11) for f in flat])
    assert torch.allclose(self_distance(feature, 2, rows=37), brute, atol=1e-6)

    points = torch.randn(75, 8, generator=generator)  # under 2 x size: no pre-sample
    core = greedy_coreset(points, 40, projection_dim=8, rows=16)
    picked = [int((points == row).all(dim=1).nonzero()[0]) for row in core]
    plain = torch.cdist(points, points[picked[:1]]).squeeze(1)  # replay the greedy on plain distances
    for index in picked[1:]:  # step 1 (size < 200): each pick is the farthest point from the rest
        assert plain[index] >= plain.max() - 1e-4
        plain = torch.minimum(plain, torch.cdist(points, points[index:index + 1]).squeeze(1))


def test_random_cover_keeps_distinct_bank_rows_and_unknown_covers_are_refused():
    bank = torch.randn(1000, 16, generator=torch.Generator().manual_seed(1))
    subset = random_subset(bank, 100, seed=3)
    assert subset.shape == (100, 16) and torch.equal(subset, random_subset(bank, 100, seed=3))
    rows = (subset[:, None] == bank[None]).all(dim=-1).nonzero()[:, 1]
    assert rows.unique().numel() == 100  # each an original row, none twice
    assert random_subset(bank[:50], 100).shape == (50, 16)  # under the cap: the whole bank
    with pytest.raises(ValueError, match="cover"):
        MemoryBank([1], cover="kmeans")


def test_a_bank_counts_the_patches_of_every_level_and_turned_view():
    levels = [torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3)]
    pooled = MemoryBank([0, 1], pool=1).fit_features([levels, levels])
    posed = MemoryBank([0, 1], pool=1, pose_views=1).fit_features([levels, levels, levels], [0, 0, 0])
    assert pooled.n_patches() == 2 * (36 + 9) and posed.n_patches() == 3 * (36 + 9)


def test_area_resize_keeps_aspect_and_encodes_mixed_sizes(engine, textile_images):
    wide = textile_images[0].resize((500, 250))
    assert engine.encoder.resize == "area"
    with pytest.raises(ValueError, match="one input size"):
        engine.encode([wide, textile_images[1]])
    square, long = engine.encode_each([textile_images[1], wide])
    assert engine.map_size(square) == (56, 56)  # 448 px at stride 8
    height, width = engine.map_size(long)
    assert width == 2 * height and abs(width * height - 56 * 56) < 0.1 * 56 * 56


def test_the_trained_text_map_also_reads_a_coarser_encoding(engine, textile_images):
    """The shipped text map averages its verdict at the bank's 448 px and at 256 px
    (`text_map.extra_image_size`); untrained adapters are never used, so nothing pays for the
    second encoding."""
    shipped = AnomalyEngine("embedded")
    assert shipped.text_map.trained and shipped.text_extra_size == 256
    encoded = shipped.encode([textile_images[0]])
    assert encoded.levels[1].shape[-2:] == (56, 56) and encoded.text_levels[1].shape[-2:] == (32, 32)
    text = shipped.text_map.text_features(shipped.encoder, "textile")
    fine, coarse = (shipped.text_map(shipped.encoder.encode_images([textile_images[0]], side).levels, text, (56, 56))
                    for side in (448, 256))
    assert torch.allclose(shipped.text_maps(encoded, "textile"), (fine + coarse) / 2, atol=1e-6)
    assert engine.encode([textile_images[0]]).text_levels is None
    wide = textile_images[1].resize((500, 250))
    one, two = shipped.encode_each([textile_images[1], wide])
    width, height = shipped.encoder.input_size(wide, 256)
    assert one.text_levels[1].shape[-2:] == (32, 32) and two.text_levels[1].shape[-2:] == (height // 8, width // 8)
    assert width > 1.5 * height


def test_the_text_map_scales_the_texture_map_as_it_scales_the_bank(textile_images):
    """A surface map is the fused bank map plus the texture map's excess, both scaled by the text map:
    unscaled, the excess would count for less with trained adapters than without, since both are
    divided by the fused maps' normal peak."""
    shipped = AnomalyEngine("embedded")
    references = shipped.references(textile_images[:1], "textile")
    query = shipped.encode([with_blot(textile_images[1], (24, 120, 90, 194))])
    text = shipped.text_maps(query, "textile")
    maps, _ = shipped.assess(query, references, "textile")
    texture, = (scorer for scorer in shipped.scorers if isinstance(scorer, TextureScorer))
    excess = np.maximum(texture.distance_maps(query, references.texture) - 1.0, 0.0)
    texture_part = maps - shipped.bank.raw_maps(query, references.bank, shipped.text.scale(text)) / references.peak_unit
    assert excess.max() > 0 and float(text.min()) > 0
    expected = 0.1 * excess * (1.0 + text.numpy()) / references.peak_unit
    np.testing.assert_allclose(texture_part, expected, rtol=1e-4, atol=1e-6)


def test_a_fixed_size_encoder_refuses_a_text_map_size():
    small_clip = {"model": "ViT-B-32", "pretrained": None, "device": "cpu", "blocks": None}
    preset = load_preset("clip-vit-l-14-336", {"encoder": small_clip, "text_map": {"extra_image_size": 256}})
    with pytest.raises(EngineError, match="fixed"):
        AnomalyEngine(preset, checkpoint_dir="/nonexistent-untrained")


def test_the_trained_text_map_alone_ranks_real_tires(tire_dir):
    """Issue 4's cross-domain figure on a sample: adapters trained on textile only, no references, no
    self map; defective tires must outrank good ones more often than with random adapters."""
    def text_map_only(checkpoint):
        preset = load_preset("embedded", {"anomaly_map": {"zero_shot_self_radius": 0}})
        return AnomalyEngine(preset, checkpoint_dir=checkpoint)
    shipped = text_map_only(None)
    random_adapters = text_map_only("/nonexistent-untrained")
    random_adapters.text_map.trained = True  # the same shapes at their random initialisation
    goods = sorted((tire_dir / "test" / "good").glob("*.jpg"))
    defective = [p for kind in ("combined", "contamination", "cut", "hole")
                 for p in sorted((tire_dir / "test" / kind).glob("*.jpg"))[:6]]
    labels = [0] * len(goods) + [1] * len(defective)
    images = [open_rgb(p) for p in goods + defective]
    trained = roc_auc_score(labels, [shipped.detect(i, class_name="tire").score for i in images])
    untrained = roc_auc_score(labels, [random_adapters.detect(i, class_name="tire").score for i in images])
    assert trained > untrained + 0.1, (trained, untrained)  # 0.584 vs 0.405; at 448 px alone 0.515 vs 0.461


def test_zero_shot_points_at_real_tire_holes(tire_dir):
    """The shipped embedded default, no references, on real photos: holes outrank good tires and the
    map's hottest point lies on the marked hole."""
    engine = AnomalyEngine("embedded")
    holes = sorted((tire_dir / "test" / "hole").glob("*.jpg"))[:6]
    goods = sorted((tire_dir / "test" / "good").glob("*.jpg"))[:6]
    scores, hits = [], 0
    for path in goods + holes:
        detection = engine.detect(open_rgb(path), class_name="tire")
        scores.append(detection.score)
        if path in holes:
            mask = load_mask(tire_dir / "ground_truth" / "hole" / f"{path.stem}_mask.png", detection.image_size)
            near = cv2.dilate(mask.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
            hits += bool(near.flat[int(np.argmax(detection.anomaly_map))])
    assert roc_auc_score([0] * len(goods) + [1] * len(holes), scores) > 0.9  # the text map alone: 0.81
    assert hits >= 4  # the text map alone: 3 of 6


def test_the_edges_of_real_magnetic_tiles_do_not_decide_the_score(magnetic_tile_dir):
    """Good tiles' map peaks sit on the photo's edge (crops end at a tile's bevel or rim): scored away
    from the edge, defective tiles outrank good ones more often, with the threshold read the same way."""
    reference = [open_rgb(sorted((magnetic_tile_dir / "train" / "good").glob("*.jpg"))[0])]
    goods = sorted((magnetic_tile_dir / "test" / "good").glob("*.jpg"))[:18]
    defective = [p for kind in ("blowhole", "break", "fray")
                 for p in sorted((magnetic_tile_dir / "test" / kind).glob("*.jpg"))[:6]]
    labels = [0] * len(goods) + [1] * len(defective)
    shipped = AnomalyEngine("embedded")
    whole_map = AnomalyEngine(load_preset("embedded", {"anomaly_map": {"score_border": 0}}))
    assert shipped.map_cfg["score_border"] == 3
    encoded = shipped.encode_each([shipped.prepare(open_rgb(p))[0] for p in goods + defective])

    def assessed(engine):
        references = engine.references(reference, "magnetic tile")
        return [engine.assess(one, references, "magnetic tile") for one in encoded]

    inside, everywhere = assessed(shipped), assessed(whole_map)
    edge_peaks = 0
    for maps, _ in inside[:len(goods)]:
        y, x = np.unravel_index(maps[0].argmax(), maps[0].shape)
        edge_peaks += min(y, x, maps[0].shape[0] - 1 - y, maps[0].shape[1] - 1 - x) < 3
    assert edge_peaks >= len(goods) // 2, edge_peaks
    inside_auroc = roc_auc_score(labels, [float(scores[0]) for _, scores in inside])
    everywhere_auroc = roc_auc_score(labels, [float(scores[0]) for _, scores in everywhere])
    # measured 0.840 vs 0.769, with 17 of 18 good tiles peaking at the edge
    assert inside_auroc > everywhere_auroc + 0.03, (inside_auroc, everywhere_auroc)


def test_a_recoloured_part_raises_the_colour_term_and_a_turned_one_does_not(engine, tire_dir):
    """Objects: the part's colour distribution, read on the whole photo, ignores pose and catches a
    piece whose tone changed, which the relative patch map does not. Its unit is measured by holding
    each reference out, so one reference gets no colour term."""
    from assistant.foreground import estimate_foreground, rotate_image
    from assistant.maps.colour_stats import colour_quantiles, colour_shift

    goods = sorted((tire_dir / "train" / "good").iterdir())
    reference_images = [open_rgb(goods[0]), open_rgb(goods[1])]
    normal = open_rgb(sorted((tire_dir / "test" / "good").iterdir())[0])
    turned = Image.fromarray(rotate_image(np.asarray(normal), 100))
    pixels = np.asarray(normal).astype(np.float32)
    part = estimate_foreground(normal)
    half = part & (np.arange(part.shape[1])[None, :] > np.median(np.nonzero(part)[1]))
    pixels[half] *= 1.5  # the part's right half brighter
    recoloured = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    assert colour_shift(colour_quantiles(turned)[None], colour_quantiles(normal))[0] < engine.colour.normal_level
    assert engine.references(reference_images[:1], "tire").colour is None  # nothing to hold out
    references = engine.references(reference_images, "tire")
    assert references.relative and references.colour is not None
    held_out = colour_shift(colour_quantiles(reference_images[0])[None], colour_quantiles(reference_images[1]))[0]
    assert references.colour_unit == pytest.approx(max(engine.colour.normal_level, held_out), rel=1e-5)

    def colour_term(image):
        encoded = engine.encode([engine.prepare(image)[0]], sources=[image])
        return float(engine.colour.assess(encoded, references, None)[1][0])

    assert abs(colour_term(turned) - colour_term(normal)) < 0.1
    assert colour_term(recoloured) > colour_term(normal) + 0.2
    detections = [engine.detect(image, reference_images, "tire") for image in (normal, recoloured)]
    assert detections[1].score - detections[0].score > 0.2

    tensors, meta = references.state()
    restored = ReferenceSet.restore(tensors, meta)
    np.testing.assert_allclose(restored.colour, references.colour)
    assert restored.colour_unit == references.colour_unit
    with pytest.raises(RuntimeError, match="source images"):
        engine.colour.assess(engine.encode([engine.prepare(normal)[0]]), references, None)
