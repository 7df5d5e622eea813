"""Well-known locations: the state directory and the bundled sample corpus."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = REPO_ROOT / "data" / "sample"


def state_home() -> Path:
    """TINYFORGE_HOME: databases, datasets, runs, artifacts (default ./.tinyforge)."""
    return Path(os.environ.get("TINYFORGE_HOME", ".tinyforge")).resolve()
