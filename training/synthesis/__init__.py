"""Synthetic anomalies with exact masks, made from normal images only.

The assistant never sees a real defect during training. Instead every normal image can be turned into
an "anomalous" one by one of three methods, each returning the image and a boolean mask that is exact:
outside the mask the pixels are the original ones.

* ``poisson``  - a patch from another normal image (a *donor*) blended in with ``cv2.seamlessClone``
  (normal or mixed gradients), in the spirit of NSA. The mask is where the blend really changed the
  image (beyond ``change_threshold``), so an invisible blend is never labelled as a defect.
* ``cutpaste`` - a patch of the same image or a donor, colour/brightness jittered and pasted hard;
  sometimes as a thin rotated "scar".
* ``perlin``   - a thresholded Perlin-noise region (DRAEM style) in which a texture source (a donor or
  a strongly jittered / tile-shuffled copy of the image itself) is blended in with opacity 0.2-0.8.

Which augmentations are safe depends on the class (rotations are wrong for objects whose orientation
matters, textures need no object mask); the settings live in ``training/synthesis.json``.

Preview from the command line::

    python -m training.synthesis --data ../shared/datasets/tire/train/good --out grid.png
    python -m training.synthesis --data conformal-clip-data --out grid.png --class-name textile
"""
from .config import CONFIG_PATH, IMAGE_SUFFIXES, METHODS, SynthesisConfig, configured_classes, load_synthesis_config
from .image_ops import perlin_noise
from .preview import main, preview_grid
from .synthesizer import AnomalySynthesizer, SynthesisResult

__all__ = ["CONFIG_PATH", "IMAGE_SUFFIXES", "METHODS", "AnomalySynthesizer", "SynthesisConfig", "SynthesisResult",
           "configured_classes", "load_synthesis_config", "main", "perlin_noise", "preview_grid"]
