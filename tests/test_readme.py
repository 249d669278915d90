"""The README's promises run: its API snippet executes as written (on the official-layout fixture weights) and gives
what its comments say, and every command it shows names a script that exists, with flags that script defines."""
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
    # "list of K LongTensors": token ids, each a valid index into the V = 4096 codebook
    assert all(t.dtype == torch.int64 and 0 <= t.min() and t.max() < 4096 for t in scope["idx"])
    # "in eval() mode no label is dropped": the forward is deterministic, and the null class 1000 is accepted
    var, labels, x = scope["var"], scope["labels"], scope["x"]
    with torch.no_grad():
        assert torch.equal(var(labels, x), scope["logits"])
        assert var(torch.tensor([1000, 1000]), x).shape == (2, 680, 4096)


def shown_commands() -> list:
    """(script, [--flags]) of every `X.py --flag ...` command the README shows (with or without `python` or
    `torchrun` before it), in code blocks (backslash continuations joined) and in inline code spans (which may wrap
    over a line break)."""
    text = readme()
    spans = [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", text, re.S)]
    spans += [span.replace("\n", " ") for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", text)]
    commands = []
    for span in spans:
        for command in re.split(r"&&|;", span):
            match = re.search(r"([\w./-]+\.py)(.*)", command)
            if match and "--" in match.group(2):  # names without flags may be official files (`quant.py`)
                commands.append((match.group(1), re.findall(r"(?<!\S)(--[a-z][\w-]*)", match.group(2))))
    return commands


def test_shown_commands_use_flags_the_scripts_define():
    """Every flag in a README command is defined by its script (or by the shared flags of minvar/training/arguments.py and
    tutorials/common.py), so a renamed or removed flag cannot leave the README promising it."""
    commands = shown_commands()
    assert any(flags for _, flags in commands), "no command with flags found: the parser above is broken"
    shared = (REPO / "minvar" / "training" / "arguments.py").read_text()
    shared += (REPO / "tutorials" / "common.py").read_text()
    for script, flags in commands:
        assert (REPO / script).is_file(), f"the README runs {script}, which is not in the repository"
        source = (REPO / script).read_text() + shared
        for flag in flags:
            assert f'"{flag}"' in source, f"the README shows {script} {flag}, which {script} does not define"


def test_commands_name_existing_scripts():
    """Every `python X.py` in the README's first two commands is a file in the repository."""
    blocks = re.findall(r"```bash\n(.*?)```", readme(), re.S)[:2]
    scripts = re.findall(r"python (\S+\.py)", "\n".join(blocks))
    assert scripts, "no commands found"
    for script in scripts:
        assert (REPO / script).is_file(), script
    assert "pytest" in blocks[1]


def test_reading_path_is_on_the_first_screen_and_its_line_counts_are_current():
    """The README's reading path (the method's files in reading order, each with its line count) starts within the
    first 60 lines, names every module at the top of minvar/ (the method), and each count is within 10% of the
    file's real length, so the table cannot silently go stale as the files change."""
    lines = readme().splitlines()
    rows = [(i, m) for i, line in enumerate(lines)
            if (m := re.match(r"\| *\d+ *\| *\[`(minvar/\w+\.py)`\]\([^)]*\) *\| *(\d+) *\|", line))]
    assert rows, "no reading-path rows found: the pattern above is broken"
    assert rows[0][0] < 60, f"the reading path starts at line {rows[0][0] + 1}"
    named = {m.group(1) for _, m in rows}
    method = {f"minvar/{path.name}" for path in (REPO / "minvar").glob("*.py") if path.name != "__init__.py"}
    assert named == method, f"reading path {sorted(named)} against the method's files {sorted(method)}"
    for _, m in rows:
        real = len((REPO / m.group(1)).read_text().splitlines())
        assert abs(int(m.group(2)) - real) <= 0.1 * real, f"{m.group(1)}: README says {m.group(2)} lines, it has {real}"
