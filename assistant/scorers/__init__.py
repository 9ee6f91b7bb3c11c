"""Scorers: each term of an assessment owns its fitting, its map and its calibration.

With references, the engine adds the terms of

- `BankScorer` (memory bank): distance to the nearest normal patch; sets the map's unit (1 = the
  highest held-out normal peak) and the score's main term, the map's interior peak;
- `TextureScorer` (surfaces): where window texture statistics leave the references' spread; map only;
- `GlobalStatsScorer` (surfaces): the whole image's texture-statistics shift; score only;
- `ColourScorer` (objects): the part's colour-distribution shift; score only;

each scaled by `TextScorer`'s abnormal probability where it scales a distance. Without references,
`ZeroShotScorer` makes the map alone. The pure models they fit live in `assistant/maps/`.
"""
from .bank import BankScorer
from .base import ReferenceViews, Scorer, Terms, grid_size, held_out_folds, held_out_queries
from .colour import ColourScorer
from .global_stats import GlobalStatsScorer
from .text import TextScorer
from .texture import TextureScorer
from .zero_shot import ZeroShotScorer

__all__ = ["BankScorer", "ColourScorer", "GlobalStatsScorer", "ReferenceViews", "Scorer", "Terms", "TextScorer",
           "TextureScorer", "ZeroShotScorer", "grid_size", "held_out_folds", "held_out_queries"]
