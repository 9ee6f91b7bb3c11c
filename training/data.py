"""Dataset of synthesised samples made from folders of normal images.

Sample `i` is a pure function of (seed, i): the same index always gives the same image, mask and
conversation, so a resumed or multi-process run sees exactly the data a single run would.
About half of the samples are anomalous (a synthetic defect with its exact mask), the rest normal.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from training.synthesis import IMAGE_SUFFIXES, AnomalySynthesizer, load_synthesis_config
from training.targets import make_targets

CONFORMAL = "conformal-clip-data"
CONFORMAL_TEST_IMAGES = 100  # nominal[:100] are evaluation images: never train on them


@dataclass
class Source:
    folder: Path
    class_name: str
    files: list[Path]


def resolve_sources(data: list[str], class_names: list[str] | None = None) -> list[Source]:
    """`--data` entries -> image lists. 'conformal-clip-data' = MIT textile nominal[100:] (class 'textile')."""
    if not data:
        raise ValueError("--data needs at least one folder (or 'conformal-clip-data')")
    class_names = list(class_names or [])
    if class_names and len(class_names) not in (1, len(data)):
        raise ValueError("--class-name: give one name, or one per --data entry")
    sources = []
    for i, entry in enumerate(data):
        name = class_names[i] if len(class_names) == len(data) else (class_names[0] if class_names else None)
        if entry == CONFORMAL:
            import conformal_clip_data

            folder = Path(conformal_clip_data.nominal_dir())
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[CONFORMAL_TEST_IMAGES:]
            name = name or "textile"
        else:
            folder = Path(entry)
            if not folder.is_dir():
                raise ValueError(f"{entry}: not a folder of normal images")
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            name = name or folder.resolve().name
        if len(files) < 2:
            raise ValueError(f"{entry}: need at least 2 normal images, found {len(files)}")
        sources.append(Source(folder, name.replace("_", " "), files))
    return sources


def _mask_to(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool mask -> size x size {0,1} float; thin defects survive (area share > 0.25 counts)."""
    small = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (small > 0.25).astype(np.float32)


class SyntheticDataset:
    def __init__(self, sources: list[Source], image_size: int, mask_size: int, seed: int = 0,
                 anomaly_fraction: float = 0.5, chat_fraction: float = 0.12, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 with_text: bool = True, max_side: int = 320):
        self.sources = sources
        self.image_size, self.mask_size, self.seed = image_size, mask_size, seed
        self.anomaly_fraction, self.chat_fraction = anomaly_fraction, chat_fraction
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        self.with_text = with_text
        self.max_side = max_side
        self.synthesizers = {s.class_name: AnomalySynthesizer(load_synthesis_config(s.class_name.replace(" ", "_")), seed)
                             for s in sources}

    def __len__(self) -> int:
        return sum(len(s.files) for s in self.sources)

    def _load(self, path: Path) -> Image.Image:
        image = Image.open(path).convert("RGB")
        if max(image.size) > self.max_side:  # synthesis cost grows with pixels; the encoder squashes anyway
            scale = self.max_side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        return image

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        source = self.sources[int(rng.integers(len(self.sources)))]
        synth = self.synthesizers[source.class_name]
        pick = int(rng.integers(len(source.files)))
        image = self._load(source.files[pick])
        if synth.config.flip:
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
            if rng.random() < 0.5:
                image = ImageOps.flip(image)
        if synth.config.rotate and rng.random() < 0.5:
            image = image.rotate(90 * int(rng.integers(1, 4)), expand=True)
        if rng.random() < self.anomaly_fraction:
            donor_ids = [int(d) for d in rng.choice(len(source.files), size=2, replace=False) if int(d) != pick][:1]
            donors = [self._load(source.files[d]) for d in donor_ids] or [image]
            image, mask = synth.synthesize(image, donors, rng=rng)
        else:
            mask = np.zeros((image.height, image.width), dtype=bool)
        array = np.asarray(image.resize((self.image_size, self.image_size), Image.BICUBIC), dtype=np.float32) / 255.0
        pixels = torch.from_numpy(((array - self.mean) / self.std).transpose(2, 0, 1).copy())
        sample = {"pixels": pixels, "mask": torch.from_numpy(_mask_to(mask, self.mask_size)),
                  "class_name": source.class_name, "index": int(index)}
        if self.with_text:
            targets = make_targets(mask, source.class_name, rng, self.chat_fraction)
            sample["chat"] = targets.conversation
        return sample


def collate(samples: list[dict]) -> dict:
    batch = {"pixels": torch.stack([s["pixels"] for s in samples]), "mask": torch.stack([s["mask"] for s in samples]),
             "class_name": [s["class_name"] for s in samples], "index": [s["index"] for s in samples]}
    if "chat" in samples[0]:
        batch["chat"] = [s["chat"] for s in samples]
    return batch
