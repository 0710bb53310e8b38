"""The outbox directory: one file per message not sent elsewhere (mail, SMS), written atomically."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path


def write_message(directory: Path, suffix: str, data: bytes) -> Path:
    """Write ``data`` to a new file named sortably by time; mode 0600 (messages carry codes and links).

    The file appears whole or not at all (temporary file, fsync, rename). Raises OSError.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{secrets.token_hex(4)}{suffix}"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        final = directory / name
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final
