"""Print pyproject.toml's runtime dependencies without torch, one per line.

Used by Dockerfile.cuda: the base image's CUDA torch must stay, so everything else is
installed from this list and cpflow itself with --no-deps.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

__all__ = ["requirements_without_torch"]


def requirements_without_torch(pyproject: Path) -> list[str]:
    """Return [project].dependencies minus any requirement on the torch distribution itself."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    name = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
    kept = []
    for dep in deps:
        match = name.match(dep)
        if match and match.group(1).lower() == "torch":
            continue
        kept.append(dep)
    return kept


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    print("\n".join(requirements_without_torch(path)))
