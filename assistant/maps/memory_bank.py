"""Few-shot map: distance of each query patch to the nearest patch of the normal reference images."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..foreground import rotate_image, rotation


AUGMENTATIONS = {
    "identity": lambda im: im,
    "hflip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.FLIP_TOP_BOTTOM),
    "rot90": lambda im: im.transpose(Image.ROTATE_90),
    "rot180": lambda im: im.transpose(Image.ROTATE_180),
    "rot270": lambda im: im.transpose(Image.ROTATE_270),
}


def rotate_any(image: Image.Image, degrees: float) -> Image.Image:
    """`image` turned by `degrees` about its centre (canvas and corners: see `rotate_image`)."""
    return Image.fromarray(rotate_image(np.asarray(image), degrees))


def augmentation(name: str):
    """The view function for a name of AUGMENTATIONS, or "rot<degrees>" / "hflip+rot<degrees>"."""
    if name in AUGMENTATIONS:
        return AUGMENTATIONS[name]
    flip, _, rest = name.rpartition("+")
    if rest.startswith("rot") and flip in ("", "identity", "hflip"):
        try:
            degrees = float(rest[3:])
        except ValueError:
            degrees = None
        if degrees is not None:
            return lambda im: rotate_any(AUGMENTATIONS[flip or "identity"](im), degrees)
    raise ValueError(f"unknown reference augmentation {name!r}; choose from {sorted(AUGMENTATIONS)} or rot<degrees>")


def view_matrix(name: str, image: Image.Image) -> np.ndarray:
    """3 x 3 affine matrix taking a point of `image` (pixels) to the same point of its view `name`."""
    width, height = image.size
    plain = {"identity": ((1, 0, 0), (0, 1, 0)), "hflip": ((-1, 0, width), (0, 1, 0)),
             "vflip": ((1, 0, 0), (0, -1, height)), "rot90": ((0, 1, 0), (-1, 0, width)),
             "rot180": ((-1, 0, width), (0, -1, height)), "rot270": ((0, -1, height), (1, 0, 0))}
    if name in plain:
        return np.vstack([np.asarray(plain[name], dtype=np.float64), (0, 0, 1)])
    augmentation(name)  # an unknown name is refused as the bank refuses it
    flip, _, rest = name.rpartition("+")
    flipped = AUGMENTATIONS[flip or "identity"](image)
    turn, _ = rotation(np.asarray(flipped.convert("RGB")), float(rest[3:]))
    return np.vstack([turn, (0, 0, 1)]) @ view_matrix(flip or "identity", image)


def augment(images: list[Image.Image], names: list[str]) -> list[Image.Image]:
    views = [augmentation(name) for name in names]
    return [view(image) for image in images for view in views]


def aggregate(level: torch.Tensor, pool: int) -> torch.Tensor:
    """Average each patch with its neighbours so a patch describes a little context (PatchCore)."""
    if pool <= 1:
        return level
    return F.avg_pool2d(level, pool, stride=1, padding=pool // 2, count_include_pad=False)


def view_key(feature: torch.Tensor) -> torch.Tensor:
    """The patches `MemoryBank.choose_views` compares of a 1 x C x h x w coarsest-level feature:
    every other cell, a quarter of the cost, enough to tell views apart."""
    return patches(feature[:, :, ::2, ::2])


def patches(level: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> (B*h*w) x C, L2-normalised."""
    return F.normalize(level.permute(0, 2, 3, 1).reshape(-1, level.shape[1]), dim=-1)


def greedy_coreset(bank: torch.Tensor, size: int, seed: int = 0, projection_dim: int = 32, rows: int = 4096) -> torch.Tensor:
    """Pick `size` rows that cover the bank (k-centre greedy, PatchCore), made affordable on a CPU:
    distances on a random projection, the size/200 farthest rows added per round (exact greedy for
    small sizes), and a random pre-sample of 2 x `size` rows when the bank is larger than that.

    Squared distances to each round's new centres are one matrix product per `rows` bank rows,
    reduced while the block is in cache: the same picks as a whole-bank `cdist` in a sixth of the
    time (50,000 of 400,000 patches: 35.8 -> 5.8 s on 2 cores; docs/method.md, "Nearest neighbours")."""
    if bank.shape[0] <= size:
        return bank
    generator = torch.Generator().manual_seed(seed)
    if bank.shape[0] > 2 * size:
        bank = bank[torch.randperm(bank.shape[0], generator=generator)[:2 * size]]
    step = max(1, size // 200)
    projected = bank
    if bank.shape[1] > projection_dim:
        projected = bank @ torch.randn(bank.shape[1], projection_dim, generator=generator) / projection_dim**0.5
    norms = (projected * projected).sum(dim=1)
    blocks = list(zip(projected.split(rows), norms.split(rows)))

    def squared_distance(centres: torch.Tensor) -> torch.Tensor:
        """Each row's squared distance to the nearest of `centres` (indices)."""
        scaled, centre_norms = projected[centres].T * -2.0, norms[centres][None]
        return torch.cat([torch.addmm(centre_norms, block, scaled).amin(dim=1) + block_norms for block, block_norms in blocks])

    chosen = torch.randint(bank.shape[0], (1,), generator=generator)
    distance = squared_distance(chosen)
    picked = [chosen]
    count = 1
    while count < size:
        new = distance.topk(min(step, size - count)).indices
        picked.append(new)
        count += new.numel()
        distance = torch.minimum(distance, squared_distance(new))
    return bank[torch.cat(picked)]


def random_subset(bank: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """`size` rows drawn without replacement: a cheaper, less even cover than `greedy_coreset`."""
    if bank.shape[0] <= size:
        return bank
    return bank[torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(seed))[:size]]


COVERS = {"greedy": greedy_coreset, "random": random_subset}


def similarity_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype patch similarities are computed in. "auto": bfloat16 where the hardware multiplies
    it natively (AVX512-BF16/AMX CPUs, recent GPUs), which more than halves the dominant cost of a
    query (docs/method.md, "Memory bank") while moving a cosine by about 0.003, far below the distances that matter."""
    if precision == "float32":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"unknown memory-bank precision {precision!r}; choose auto, float32 or bfloat16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return torch.bfloat16 if native is not None and native() else torch.float32


def nearest_similarity(queries: torch.Tensor, bank: torch.Tensor, rows: int = 1024, columns: int = 1024) -> torch.Tensor:
    """Max cosine similarity of each query row to the bank (float32), exact.

    Products are taken `rows` queries x `columns` bank patches at a time, a running max kept per
    query: a 4 MB block stays in cache while its max is read, where one product over the whole
    bank is written to memory and read back. On 2 cores this is 2.5-4.5 x faster than whole-bank
    rows at every bank size a query meets (3,136 query patches x 50,000 bank patches: 734 -> 164 ms;
    docs/method.md, "Nearest neighbours"), and faster than faiss's exact index; its approximate
    indices were no faster at the error they allow. Queries are cast to the bank's dtype.
    """
    queries = queries.to(bank.dtype)
    blocks = [part.T for part in bank.split(columns)]
    best = []
    for part in queries.split(rows):
        nearest = (part @ blocks[0]).amax(dim=1)
        for block in blocks[1:]:
            nearest = torch.maximum(nearest, (part @ block).amax(dim=1))
        best.append(nearest)
    return torch.cat(best).float()


@lru_cache(maxsize=8)
def near_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """(h*w) x (h*w): True where two cells are within `radius` of each other (Chebyshev), built as
    the Kronecker product of the row and column bands (30 x faster than comparing every pair)."""
    def band(n: int) -> torch.Tensor:
        steps = torch.arange(n)
        return ((steps[:, None] - steps[None]).abs() <= radius).to(torch.uint8)
    return torch.kron(band(h), band(w)).bool()


def self_distance(feature: torch.Tensor, radius: int, dtype: torch.dtype = torch.float32, rows: int = 1024) -> torch.Tensor:
    """For each patch, 1 - cos to the most similar patch of the same image more than `radius`
    cells away, B x h x w.

    Repetitive parts (tread, weave, grinding marks) vouch for each other, so a reference showing a
    different rotation or pose does not make them look anomalous. A defect larger than the radius
    can vouch for itself too; on the evaluation sets (docs/method.md, "Memory bank") that costs less than the false alarms
    it removes (texture statistics catch whole-image defects on surfaces with 2+ references).
    Taken `rows` patches at a time, as `nearest_similarity` is, with the mask of those rows only."""
    b, c, h, w = feature.shape
    near = near_mask(h, w, radius)
    out = []
    for image in range(b):
        flat = patches(feature[image:image + 1]).to(dtype)
        nearest = []
        for start in range(0, h * w, rows):
            cells = slice(start, start + rows)
            similarity = (flat[cells] @ flat.T).masked_fill_(near[cells], float("-inf"))
            nearest.append(similarity.amax(dim=1))
        out.append(1.0 - torch.cat(nearest).float().reshape(h, w))
    return torch.stack(out)


class MemoryBank:
    """Per-level banks of L2-normalised reference patches.

    With `pose_views` k > 0 the views are kept apart, and each query is compared only with the k
    views of every reference image whose patches it matches best (`choose_views`): the reference's
    pose nearest the query's, rather than patches of every pose at once, which would let an
    anomalous patch match a normal one turned by any angle.

    With `nearest_views` k > 0 (many references) the views are kept apart too, and each query is
    compared with the k views of all references that it matches best: complete photos of the
    normal parts most like this one (SPADE's nearest images), instead of a coreset of all of them
    (at 64 references, a quarter of the finer level's patches). The search is over k views, not
    over the cap."""

    def __init__(self, levels: list[int], pool: int = 3, augmentations: list[str] | None = None,
                 max_patches: int = 50_000, seed: int = 0, self_radius: int = 0, precision: str = "auto",
                 cover: str = "greedy", pose_views: int = 0, nearest_views: int = 0):
        if cover not in COVERS:
            raise ValueError(f"unknown memory-bank cover {cover!r}; choose {' or '.join(COVERS)}")
        self.cover = COVERS[cover]
        self.cover_name = cover
        self.levels = levels
        self.precision = precision
        self.pool = pool
        self.self_radius = self_radius
        self.augmentations = augmentations or ["identity"]
        self.max_patches = max_patches
        self.seed = seed
        self.pose_views = pose_views
        self.nearest_views = nearest_views
        self.banks: list[torch.Tensor] = []
        self.view_banks: list[list[torch.Tensor]] = []  # per view, per level (views_apart)
        self.view_keys: list[torch.Tensor] = []  # per view: patches that choose_views compares
        self.image_of_view: list[int] = []

    def fit_features(self, levels_per_view: list[list[torch.Tensor]], image_of_view: list[int] | None = None) -> "MemoryBank":
        """Build from encoded reference views (each a list of level tensors); `image_of_view` says
        which reference image each view was made from (default: one image per view)."""
        dtype = similarity_dtype(self.precision, levels_per_view[0][0].device)
        if self.views_apart:
            self.view_banks = [[patches(aggregate(view[level], self.pool)).to(dtype) for level in self.levels]
                               for view in levels_per_view]
            self.view_keys = [bank[-1] for bank in self.view_banks]
            self.image_of_view = list(image_of_view if image_of_view is not None else range(len(levels_per_view)))
            return self
        self.banks = [
            self.cover(torch.cat([patches(aggregate(view[level], self.pool)) for view in levels_per_view]),
                       self.max_patches, self.seed).to(dtype)
            for level in self.levels
        ]
        return self

    def state(self, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
        """Tensors and settings that `restore` rebuilds this bank from (a profile's bank)."""
        meta = {"levels": self.levels, "pool": self.pool, "augmentations": self.augmentations,
                "max_patches": self.max_patches, "seed": self.seed, "self_radius": self.self_radius,
                "precision": self.precision, "cover": self.cover_name, "pose_views": self.pose_views,
                "nearest_views": self.nearest_views, "image_of_view": self.image_of_view, "n_views": len(self.view_banks)}
        tensors = {f"{prefix}{level}": bank for level, bank in enumerate(self.banks)}
        tensors.update({f"{prefix}view{view}.{level}": bank
                        for view, banks in enumerate(self.view_banks) for level, bank in enumerate(banks)})
        return tensors, meta

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], meta: dict, prefix: str, device="cpu") -> "MemoryBank":
        bank = cls(list(meta["levels"]), int(meta["pool"]), list(meta["augmentations"]), int(meta["max_patches"]),
                   int(meta["seed"]), int(meta["self_radius"]), str(meta["precision"]), str(meta["cover"]),
                   int(meta["pose_views"]), int(meta.get("nearest_views", 0)))
        dtype = similarity_dtype(bank.precision, torch.device(device))  # this machine's, not the maker's
        n_levels = len(bank.levels)
        if bank.views_apart:
            bank.view_banks = [[tensors[f"{prefix}view{view}.{level}"].to(device, dtype) for level in range(n_levels)]
                               for view in range(int(meta["n_views"]))]
            bank.view_keys = [banks[-1] for banks in bank.view_banks]
            bank.image_of_view = [int(owner) for owner in meta["image_of_view"]]
        else:
            bank.banks = [tensors[f"{prefix}{level}"].to(device, dtype) for level in range(n_levels)]
        return bank

    def n_patches(self) -> int:
        """Patches held over all levels (and, for a pose bank, over all turned views)."""
        return sum(int(bank.shape[0]) for bank in self.banks) + sum(
            int(bank.shape[0]) for banks in self.view_banks for bank in banks)

    @property
    def views_apart(self) -> bool:
        """Whether each query is compared with views it chooses (`choose_views`), not one pooled bank."""
        return self.pose_views > 0 or self.nearest_views > 0

    def views_for(self, levels: list[torch.Tensor]) -> list[int]:
        """`choose_views` for one query given as encoded (its levels not yet pooled)."""
        return self.choose_views(view_key(aggregate(levels[self.levels[-1]], self.pool)))

    def choose_views(self, key: torch.Tensor) -> list[int]:
        """Views whose patches the query's `key` patches (N x C, the coarsest bank level, every
        other cell) match best on average: the `nearest_views` best of all, or else the
        `pose_views` best of each reference image."""
        key = key.to(self.view_keys[0].dtype)
        fit = torch.stack([(key @ view.T).amax(dim=1).float().mean() for view in self.view_keys])
        if self.nearest_views > 0:
            return torch.argsort(fit, descending=True)[:self.nearest_views].tolist()
        chosen = []
        for image in sorted(set(self.image_of_view)):
            views = [v for v, owner in enumerate(self.image_of_view) if owner == image]
            order = sorted(views, key=lambda v: -float(fit[v]))
            chosen += order[:self.pose_views]
        return chosen

    def _banks_for(self, features: list[torch.Tensor], index: int) -> list[torch.Tensor]:
        """The per-level banks query `index` of the batch is compared with."""
        if not self.views_apart:
            return self.banks
        chosen = self.choose_views(view_key(features[-1][index:index + 1]))
        return [torch.cat([self.view_banks[v][level] for v in chosen]) for level in range(len(self.levels))]

    def _features(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        return [aggregate(levels[level], self.pool) for level in self.levels]

    def _self_distances(self, features: list[torch.Tensor], radius: int) -> list[torch.Tensor]:
        dtype = similarity_dtype(self.precision, features[0].device)
        return [self_distance(feature, radius, dtype) for feature in features]

    @torch.no_grad()
    def self_distance_maps(self, levels: list[torch.Tensor], radius: int) -> list[torch.Tensor]:
        """Per configured level, each patch against the rest of its own image only, each
        B x h_l x w_l: needs no references, so it is the zero-shot map as well as the second
        opinion `distance_maps` takes with `self_radius`."""
        return self._self_distances(self._features(levels), radius)

    @torch.no_grad()
    def distance_maps(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """1 - max cosine similarity, per configured level, each B x h_l x w_l."""
        if not self.banks and not self.view_banks:
            raise RuntimeError("memory bank is empty: call fit() with reference images first")
        features = self._features(levels)
        per_query = [self._banks_for(features, b) for b in range(features[0].shape[0])]
        maps = [torch.cat([(1.0 - nearest_similarity(patches(feature[b:b + 1]), banks[i])).reshape(1, *feature.shape[-2:])
                           for b, banks in enumerate(per_query)])
                for i, feature in enumerate(features)]
        if self.self_radius > 0:
            maps = [torch.minimum(d, s) for d, s in zip(maps, self._self_distances(features, self.self_radius))]
        return maps
