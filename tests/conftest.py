import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture
def write_yaml(tmp_path):
    def _write(text: str, name: str = "sweep.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
