"""Directories a service writes to, checked when it starts.

A container runs as an unprivileged user in a read-only application directory; a state path
that is not on a writable volume must stop the service at start with the setting's name, not
with a traceback at the first write (issue 13: the worker died with a raw ``FileExistsError``
when it could not create its audit trail).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nirwatch.errors import ConfigError


def writable_dir(path: str | Path, setting: str) -> Path:
    """Create ``path`` if needed and check that this process can create files in it.

    Parameters
    ----------
    path : path
        The directory.
    setting : str
        The environment variable (or option) that chose it, for the error message.

    Raises
    ------
    ConfigError
        Naming ``setting``, the path, the user id and the operating system's reason.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        # Creating a file is the only reliable test (ACLs, read-only mounts, root squash).
        with tempfile.NamedTemporaryFile(dir=p, prefix=".nirwatch-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{setting}: {p.absolute()} is not a writable directory for uid {os.getuid()} ({reason}); "
            "mount a volume there or choose another path"
        ) from exc
    return p
