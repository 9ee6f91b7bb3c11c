"""Dataset trees written beside their destination and swapped in whole."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_folder(dst: Path, purpose: str) -> Iterator[Path]:
    """A fresh folder beside `dst` to write the tree into. When the block ends without an error the
    folder replaces `dst`; otherwise it is removed and `dst` is left as it was, so a tree that fails
    its checks or is interrupted never takes the place of a good one."""
    staging = dst.parent / f".{dst.name}.{purpose}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        if dst.exists():
            shutil.rmtree(dst)
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
