"""Evaluation datasets on disk (MVTec layout, plain folders, the MIT textile set)."""
from assistant.data.datasets import (
    IMAGE_SUFFIXES,
    DatasetError,
    Sample,
    Split,
    discover,
    is_image_file,
    list_images,
    load_conformal_textile,
    load_folder,
    load_mvtec,
    validate,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetError",
    "Sample",
    "Split",
    "discover",
    "is_image_file",
    "list_images",
    "load_conformal_textile",
    "load_folder",
    "load_mvtec",
    "validate",
]
