"""Well-known locations: the state directory, the bundled sample corpus and the full corpus."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CORPUS = REPO_ROOT / "data" / "sample"  # 0.8 MB slice: tests and the demo
FULL_CORPUS = REPO_ROOT / "data" / "corpus"  # about 14 MB of text, stored .xz per file (read transparently)


def state_home() -> Path:
    """TINYFORGE_HOME: databases, datasets, runs, artifacts (default ./.tinyforge)."""
    return Path(os.environ.get("TINYFORGE_HOME", ".tinyforge")).resolve()
