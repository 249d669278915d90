"""Shared test fixtures: the official tiny models from ../shared, and tiny random minvar models."""
import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MINVAR_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "official_var_tiny"
OFFICIAL_KEYS = SHARED / "reference" / "official_keys"


def require(path: pathlib.Path) -> pathlib.Path:
    """Skip (loudly, with the reason) when the shared reference data is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"{path} not found: the parity data lives in ../shared (or set MINVAR_SHARED)")
    return path


def load_fixture(name: str):
    return torch.load(require(FIXTURES / name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole test module, restored afterwards for the next module.

    Tests run tiny models on a small shared CPU: there a second OpenMP thread mostly waits for its partner (measured
    up to ~10x slower: an Inception forward took 0.4 s on one thread and 4.8 s on two). A module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`; module scope makes it active before the module's own
    module-scoped fixtures (the trained runs of test_scripts.py, for example).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def official_tiny():
    """(vae, var) of the official tiny fixture, loaded through minvar's official-checkpoint path."""
    from minvar import VAR, VQVAE
    vae = VQVAE.from_official(require(FIXTURES / "vae_state_dict.pt"))
    var = VAR.from_official(require(FIXTURES / "var_state_dict.pt"), vae=vae)
    return vae, var


@pytest.fixture(scope="session")
def fixture_images():
    """The fixture's two 256px input images in [-1, 1], rebuilt as its README says."""
    from minvar.data import from_uint8_images
    return from_uint8_images(load_fixture("inputs.pt")["img_u8_B3HW"].permute(0, 2, 3, 1))  # stored channels first


@pytest.fixture()
def tiny_pair():
    """A tiny random tokenizer and transformer that fit together (CPU-fast)."""
    from minvar import VAR, VQVAE
    torch.manual_seed(0)
    vae = VQVAE.from_preset("tiny").eval()
    var = VAR.from_preset("tiny", num_classes=10).eval()
    return vae, var
