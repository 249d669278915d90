"""Every released checkpoint layout loads strictly, and bad checkpoints fail with a message that names the problem.

The layouts come from the official_keys lists (../shared/reference, or their copy in tests/fixtures): every key,
shape and dtype of the released files. The big models are built on the meta device, so no memory is spent on 2B
parameters.
"""
import pathlib
import re

import pytest
import torch

from conftest import OFFICIAL_KEYS, official_state_dicts, require
from minvar import VAR, VQVAE, CheckpointError, load_official_var, load_official_vqvae
from minvar.io.official import infer_var_config, infer_vqvae_config, strict_load
from minvar.var import SCHEDULE_256, SCHEDULE_512

# parameter counts measured on the official classes (docs/official_model.md): an independent check of the architecture
OFFICIAL_PARAMS = {"var_d16": 310_283_520, "var_d20": 600_917_136, "var_d24": 1_033_399_360,
                   "var_d30": 2_010_020_356, "var_d36": 2_353_893_904, "vae": 108_948_355}


def read_layout(name: str):
    """key -> (shape, dtype, kind) from a keys file."""
    rows = {}
    for line in require(OFFICIAL_KEYS / f"{name}_keys.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype, kind, _ = line.split("\t")
        rows[key] = (tuple(int(s) for s in re.findall(r"\d+", shape)), getattr(torch, dtype), kind)
    return rows


def meta_state_dict(layout, patch_nums):
    """A state dict with the listed shapes on the meta device; lvl_1L gets its real values (it names the scales)."""
    state = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype, _) in layout.items()}
    if "lvl_1L" in state:
        state["lvl_1L"] = torch.cat([torch.full((pn * pn,), k) for k, pn in enumerate(patch_nums)])[None]
    return state


@pytest.mark.filterwarnings("ignore:for lvl_1L:UserWarning")
@pytest.mark.parametrize("name", ["var_d16", "var_d20", "var_d24", "var_d30", "var_d36"])
def test_var_layout_loads_strictly(name):
    """The architecture inferred from the weights has exactly the released keys and shapes, buffers included."""
    layout = read_layout(name)
    patch_nums = SCHEDULE_512 if name == "var_d36" else SCHEDULE_256
    state = meta_state_dict(layout, patch_nums)
    cfg = infer_var_config(state)
    depth = int(name[5:])
    assert (cfg.depth, cfg.width, cfg.num_heads) == (depth, 64 * depth, depth)
    assert cfg.shared_aln == (name == "var_d36") and tuple(cfg.patch_nums) == patch_nums
    with torch.device("meta"):
        var = VAR(cfg)
    mine = var.state_dict()
    assert set(mine) == set(layout)
    assert all(tuple(mine[k].shape) == layout[k][0] for k in layout)
    assert sum(p.numel() for p in var.parameters()) == OFFICIAL_PARAMS[name]
    strict_load(var, state, name)  # no key missing or left over


def test_vae_layout_loads_strictly():
    """The "official" VQVAE preset has exactly the keys and shapes of vae_ch160v4096z32.pth."""
    layout = read_layout("vae")
    state = meta_state_dict(layout, SCHEDULE_256)
    cfg = infer_vqvae_config(state)
    assert (cfg.channels, cfg.channel_mult, cfg.num_phis, cfg.vocab_size) == (160, (1, 1, 2, 2, 4), 4, 4096)
    with torch.device("meta"):
        vae = VQVAE.from_preset("official")
    mine = vae.state_dict()
    assert set(mine) == set(layout) and all(tuple(mine[k].shape) == layout[k][0] for k in layout)
    assert sum(p.numel() for p in vae.parameters()) == OFFICIAL_PARAMS["vae"]
    strict_load(vae, state, "VQVAE")


def test_vae_file_given_as_var_file_is_named(official_weight_files):
    """Loading the tokenizer file as a transformer says so and says what to do."""
    with pytest.raises(CheckpointError, match="load_official_vqvae"):
        load_official_var(official_weight_files["vae"])
    with pytest.raises(CheckpointError, match="load_official_var"):
        load_official_vqvae(official_weight_files["var"])


def test_missing_unexpected_and_misshaped_keys_are_reported():
    """A missing key, a stray key and a wrong shape each produce a message naming the key."""
    state = official_state_dicts()[1]
    broken = dict(state)
    del broken["head.bias"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\) \['head.bias'\]"):
        load_official_var(broken)
    broken = dict(state, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected key.*extra.weight"):
        load_official_var(broken)
    broken = dict(state, **{"blocks.1.ffn.fc2.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match=r"blocks.1.ffn.fc2.bias.*\(7,\).*\(128,\)"):
        load_official_var(broken)


def test_unreadable_and_code_carrying_files_are_refused(tmp_path, official_weight_files):
    """A truncated file, a missing file and a pickle that would run code all give a CheckpointError."""
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official_var(tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official_weight_files["var"].read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_official_var(truncated)

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(CheckpointError):
        load_official_var(evil)
    assert not (tmp_path / "pwned").exists()  # weights_only=True: the file never ran code


def test_vae_and_var_that_do_not_fit_are_refused(official_tiny):
    """A VAR whose codebook or scale schedule differs from the VQVAE's is refused when paired."""
    vae, _ = official_tiny
    other = VAR.from_preset("tiny")
    with pytest.raises(ValueError, match="codebook"):
        load_official_var(other.state_dict(), vae=vae)
