"""The README's promises run: its API snippet executes as written (on the official-layout fixture weights) and its
two commands name files and flags that exist."""
import re

import torch

from conftest import REPO


def readme() -> str:
    return (REPO / "README.md").read_text()


def test_api_snippet_runs_on_official_layout_weights(official_weight_files):
    """The snippet, with the released file names swapped for the fixture's official-layout weights, runs and
    gives the shapes and ranges its comments promise."""
    code = re.search(r"```python\n(.*?)```", readme(), re.S).group(1)
    code = code.replace('"vae_ch160v4096z32.pth"', repr(str(official_weight_files["vae"])))
    code = code.replace('"var_d16.pth"', repr(str(official_weight_files["var"])))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert [t.shape for t in scope["idx"]] == [(2, pn * pn) for pn in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    assert scope["rec"].shape == (2, 3, 256, 256) and scope["rec"].abs().max() <= 1
    assert scope["x"].shape == (2, 679, 32)
    assert scope["logits"].shape == (2, 680, 4096)
    imgs = scope["imgs"]
    assert imgs.shape == (2, 3, 256, 256) and 0 <= imgs.min() and imgs.max() <= 1


def test_commands_name_existing_scripts():
    """Every `python X.py` in the README's first two commands is a file in the repository."""
    blocks = re.findall(r"```bash\n(.*?)```", readme(), re.S)[:2]
    scripts = re.findall(r"python (\S+\.py)", "\n".join(blocks))
    assert scripts, "no commands found"
    for script in scripts:
        assert (REPO / script).is_file(), script
    assert "pytest" in blocks[1]
