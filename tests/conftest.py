"""Shared test fixtures: the official tiny models and their parity data, and tiny random minvar models.

The parity data is what the official code computed with small official-layout weights. Two copies exist: the full
one beside the checkout (../shared/fixtures/official_var_tiny, or $MINVAR_SHARED/fixtures/official_var_tiny), used
when present, and the compact one committed in tests/fixtures/official_var_tiny_compact (exact float32 slices of the
full one, see tests/fixtures/make_compact_fixture.py), used otherwise, so a fresh clone runs every parity test.
"""
import functools
import importlib.util
import os
import pathlib

import pytest
import torch

from fixtures.make_compact_fixture import COMPACT, rebuild_official_weights, select  # noqa: F401 (select: re-export)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MINVAR_SHARED", REPO.parent / "shared"))
FULL_FIXTURES = SHARED / "fixtures" / "official_var_tiny"
USING_FULL_DATA = FULL_FIXTURES.is_dir()
FIXTURES = FULL_FIXTURES if USING_FULL_DATA else COMPACT
OFFICIAL_KEYS = SHARED / "reference" / "official_keys" if USING_FULL_DATA else COMPACT / "official_keys"



def load_bench_script(name: str):
    """A script of bench/ (which is no package) imported as a module, so tests can call its functions."""
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def require(path: pathlib.Path) -> pathlib.Path:
    """Skip (loudly, with the reason) when a data file is missing from the copy in use."""
    if not path.exists():
        pytest.skip(f"{path} not found: neither ../shared (or $MINVAR_SHARED) nor the compact copy has it")
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


@functools.lru_cache(maxsize=None)
def official_state_dicts():
    """(vae_state_dict, var_state_dict) in the official layout: read from the full data, or rebuilt from the compact."""
    if USING_FULL_DATA:
        return tuple(torch.load(FIXTURES / f"{name}_state_dict.pt", map_location="cpu", weights_only=True)
                     for name in ("vae", "var"))
    return rebuild_official_weights(COMPACT)


@pytest.fixture(scope="session")
def official_weight_files(tmp_path_factory):
    """{"vae": path, "var": path}: the official-layout weight files (written to a temporary folder if compact)."""
    if USING_FULL_DATA:
        return {name: FIXTURES / f"{name}_state_dict.pt" for name in ("vae", "var")}
    folder = tmp_path_factory.mktemp("official_var_tiny_weights")
    paths = {}
    for name, state in zip(("vae", "var"), official_state_dicts()):
        paths[name] = folder / f"{name}_state_dict.pt"
        torch.save(state, paths[name])
    return paths


@pytest.fixture(scope="session")
def official_tiny():
    """(vae, var) of the official tiny fixture, loaded through minvar's official-checkpoint path."""
    from minvar import load_official_var, load_official_vqvae
    vae_state, var_state = official_state_dicts()
    vae = load_official_vqvae(vae_state)
    var = load_official_var(var_state, vae=vae)
    return vae, var


@pytest.fixture(scope="session")
def fixture_images():
    """The fixture's two 256px input images in [-1, 1], rebuilt as its README says."""
    from minvar.io.data import from_uint8_images
    return from_uint8_images(load_fixture("inputs.pt")["img_u8_B3HW"].permute(0, 2, 3, 1))  # stored channels first


@pytest.fixture()
def tiny_pair():
    """A tiny random tokenizer and transformer that fit together (CPU-fast)."""
    from minvar import VAR, VQVAE
    torch.manual_seed(0)
    vae = VQVAE.from_preset("tiny").eval()
    var = VAR.from_preset("tiny", num_classes=10).eval()
    return vae, var
