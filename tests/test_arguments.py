"""Every count, size and probability flag of the scripts is checked at parse time, with a message naming the flag.

A bad value must end the script with argparse's usage error ("argument --per-class: must be a positive integer,
got -3"), exit status 2, before any data, model or file is touched; a good value must still parse to a number.
Only `parse_args` runs here, so the whole file takes well under a second.
"""
import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # the scripts live at the repository root, beside the minvar package
    sys.path.insert(0, str(REPO))
import evaluate  # noqa: E402
import sample  # noqa: E402
import train_tokenizer  # noqa: E402
import train_var  # noqa: E402

SCRIPTS = {"train_tokenizer": train_tokenizer, "train_var": train_var, "sample": sample, "evaluate": evaluate}
POSITIVE = ["0", "-3", "2.5", "many"]
NON_NEGATIVE = ["-1", "1.5", "x"]
PROBABILITY = ["-0.1", "1.5", "nan", "half"]
POSITIVE_FLOAT = ["0", "-1e-3", "inf", "x"]
NON_NEGATIVE_FLOAT = ["-0.5", "inf", "x"]

FLAGS = [  # (script, flag, bad values, a good value)
    *[(s, f, POSITIVE, "3") for s in ("train_tokenizer", "train_var")
      for f in ("--image-size", "--num-images", "--steps", "--batch-size")],
    *[(s, f, NON_NEGATIVE, "0") for s in ("train_tokenizer", "train_var")
      for f in ("--workers", "--log-every", "--save-every", "--warmup-steps")],
    *[(s, "--grad-clip", NON_NEGATIVE_FLOAT, "0") for s in ("train_tokenizer", "train_var")],
    ("train_tokenizer", "--vocab-size", POSITIVE, "64"),
    ("train_tokenizer", "--learning-rate", POSITIVE_FLOAT, "1e-3"),
    ("train_tokenizer", "--restart-every", NON_NEGATIVE, "0"),
    ("train_tokenizer", "--grid-every", NON_NEGATIVE, "0"),
    ("train_tokenizer", "--dead-code-threshold", PROBABILITY, "0.001"),
    *[("train_tokenizer", f, NON_NEGATIVE_FLOAT, "0.5")
      for f in ("--mse-weight", "--l1-weight", "--perceptual-weight", "--disc-weight")],
    ("train_var", "--depth", POSITIVE, "2"),
    ("train_var", "--width", POSITIVE, "64"),
    ("train_var", "--base-learning-rate", POSITIVE_FLOAT, "0.1"),
    ("train_var", "--sample-every", NON_NEGATIVE, "0"),
    *[("train_var", f, PROBABILITY, "0.1") for f in ("--cond-drop-rate", "--label-smoothing", "--ema")],
    *[(s, "--minutes", POSITIVE_FLOAT, "0.5") for s in ("train_tokenizer", "train_var")],
    *[(s, "--threads", NON_NEGATIVE, "0") for s in ("train_tokenizer", "train_var", "sample")],
    ("sample", "--cfg", NON_NEGATIVE_FLOAT, "1.5"),
    ("sample", "--per-class", POSITIVE, "2"),
    ("sample", "--batch-size", POSITIVE, "8"),
    ("sample", "--top-k", NON_NEGATIVE, "0"),
    ("sample", "--top-p", PROBABILITY, "0.96"),
    ("evaluate", "--judge-steps", POSITIVE, "10"),
    ("evaluate", "--num-real", POSITIVE, "10"),
    ("evaluate", "--tokenizer-only", POSITIVE, "10"),
]


@pytest.mark.parametrize("script, flag, bad_values, good", FLAGS, ids=[f"{s}{f}" for s, f, _, _ in FLAGS])
def test_bad_value_is_refused_at_parse_time_naming_the_flag(script, flag, bad_values, good, capsys):
    """Each bad value exits with status 2 and a message that names the flag and the value; the good one parses."""
    parse_args = SCRIPTS[script].parse_args
    for bad in bad_values:
        with pytest.raises(SystemExit) as exit_info:
            parse_args([f"{flag}={bad}"])  # the = form: argparse would read "-1e-3" as an option
        assert exit_info.value.code == 2
        message = capsys.readouterr().err
        assert f"argument {flag}: must be" in message and bad in message, message
    value = getattr(parse_args([flag, good]), flag[2:].replace("-", "_"))
    assert value == float(good)


def test_sample_per_class_negative_is_a_usage_error(capsys):
    """The issue's case: `sample.py --per-class -3` ends with argparse's error, not a torch.cat traceback."""
    with pytest.raises(SystemExit):
        sample.parse_args(["--per-class", "-3"])
    assert "argument --per-class: must be a positive integer, got -3" in capsys.readouterr().err


def test_tokenizer_steps_default_depends_on_the_data():
    """The built-in shapes keep the quickstart's steps; an image folder (--data-path) gets the folder default, and
    says so in the log's line; --steps overrides both."""
    shapes = train_tokenizer.parse_args([])
    assert "shapes" in train_tokenizer.choose_steps(shapes) and shapes.steps == train_tokenizer.DEFAULT_STEPS["shapes"]
    folder = train_tokenizer.parse_args(["--data-path", "photos"])
    assert "image-folder" in train_tokenizer.choose_steps(folder)
    assert folder.steps == train_tokenizer.DEFAULT_STEPS["folder"] != train_tokenizer.DEFAULT_STEPS["shapes"]
    given = train_tokenizer.parse_args(["--data-path", "photos", "--steps", "7"])
    assert "--steps" in train_tokenizer.choose_steps(given) and given.steps == 7
