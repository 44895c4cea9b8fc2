"""bakeoff.curate: ingest, noise filters, deduplication, coverage, recipes."""

from __future__ import annotations

from pathlib import Path

from bakeoff.workspace import BakeoffError


def find_config_file(name: str | Path, base: Path | None = None, what: str = "file") -> Path:
    """``name`` as a path (relative to ``base``, default the current directory), or
    else a file of that name shipped with bakeoff.curate (recipes, objectives), so
    `bakeoff curate run fin@v1 default_recipe.yaml` works from anywhere."""
    path = Path(name).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.is_file():
        return path
    packaged = Path(__file__).with_name(Path(name).name)
    if packaged.is_file():
        return packaged
    raise BakeoffError(f"{what} not found: {name} (looked in {path.parent} and among bakeoff.curate's files)")
