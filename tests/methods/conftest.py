import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _private_noun_cache(tmp_path_factory, monkeypatch):
    """TAC's noun-embedding cache goes to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("MLCD_CACHE_DIR", str(tmp_path_factory.mktemp("mlcd-cache")))
