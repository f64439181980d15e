"""Writing the files the drivers keep: configs, state, caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str, mode: int = 0o600) -> None:
    """Replace ``path`` so that a reader (or a crash) sees the old or the new file whole.

    ``mode`` 0600 by default, as libvirtd writes its configs and state.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
