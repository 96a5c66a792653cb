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


@pytest.fixture(scope="module")
def jax64():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax
