"""bench/sweep_tokenizer.py compares tokenizer recipes at equal compute (no training here: milliseconds)."""
import json

import pytest

from conftest import load_bench_script

sweep_tokenizer = load_bench_script("sweep_tokenizer")


@pytest.mark.parametrize("spec", ["long=--steps 5000", "more=--minutes=9", "gan=--disc-start 100",
                                  "elsewhere=--out-dir /tmp/x", "fewer=--threads 2"])
def test_a_row_cannot_change_the_budget_data_or_gan_start(spec):
    """A row that sets a flag the driver owns would no longer be at equal compute (the GAN's start is a share of
    the row's steps, --gan-from): refused."""
    with pytest.raises(ValueError, match="set by the sweep"):
        sweep_tokenizer.parse_row(spec)


def test_gan_rows_start_the_discriminator_at_their_share_of_the_budget(tmp_path):
    """--gan-from leaves the row's flags and becomes --disc-start = share × steps; the steps bought with the budget
    pay the dearer GAN steps after the start, so plain rows and GAN rows cost the same CPU time."""
    name, flags, gan_from = sweep_tokenizer.parse_row("g=--gan-from 0.5 --disc-weight 0.1")
    assert (name, flags, gan_from) == ("g", ["--disc-weight", "0.1"], 0.5)
    steps = sweep_tokenizer.steps_for_budget(180, 0.2, 0.6, gan_from)
    assert steps == 450 and steps * (0.5 * 0.2 + 0.5 * 0.6) == pytest.approx(180)
    assert sweep_tokenizer.steps_for_budget(180, 0.2, None, None) == 900
    args = sweep_tokenizer.parse_args(["--data-path", "d", "--out-root", str(tmp_path)])
    command = sweep_tokenizer.train_command(args, "run", flags, steps, round(gan_from * steps))
    assert command[command.index("--disc-start") + 1] == "225" and command[command.index("--steps") + 1] == "450"
    with pytest.raises(ValueError):
        sweep_tokenizer.parse_row("g=--gan-from 1.0")


def test_probes_are_shared_by_rows_that_change_only_a_loss():
    """Loss weights and restarts share the plain probe; width, codebook, batch and the GAN each get their own."""
    key = sweep_tokenizer.cost_key
    assert key([], False) == key(["--mse-weight", "0", "--l1-weight", "1", "--restart-pool", "error-weighted"], False)
    assert len({key([], False), key([], True), key(["--channels", "32"], False), key(["--vocab-size", "1024"], False),
                key(["--batch-size", "32"], False)}) == 5


def test_score_reads_both_reports_and_the_table_shows_the_ratios(tmp_path):
    """A row's score puts train_tokenizer.py's PSNR and codebook use beside evaluate.py's distances, and the table
    divides the reconstructions' distance by the floor and their judge accuracy by the real images'."""
    (tmp_path / "metrics.json").write_text(json.dumps(dict(psnr=25.5, usage_per_scale=[0.01, 0.5])))
    (tmp_path / "ceiling.json").write_text(json.dumps(dict(
        frechet_distance_reconstructions=15.0, frechet_distance_real_floor=6.0, judge_accuracy_reconstructions=0.6,
        judge_accuracy_real=0.8, precision_reconstructions=0.7, recall_reconstructions=0.5)))
    score = sweep_tokenizer.score(str(tmp_path))
    assert score["fd_over_floor"] == 2.5
    text = sweep_tokenizer.table([dict(name="l1", flags=["--l1-weight", "1"], gan_from=None, steps=900,
                                       train_cpu_s=181.4, score=score)])
    assert text.splitlines()[-1] == ("| l1 | `--l1-weight 1` | 900 | 181 | 25.50 | 0.01 / 0.50 | 15.0 (6.0) | 2.50× | "
                                     "60.0% / 80.0% (0.75×) | 0.70 / 0.50 |")


def test_a_row_is_trained_by_one_process_only(tmp_path):
    """Two processes given the same row: the first to claim its folder trains it, the second is told to skip it."""
    assert sweep_tokenizer.claim(str(tmp_path / "l1")) is True
    assert sweep_tokenizer.claim(str(tmp_path / "l1")) is False
    assert sweep_tokenizer.claim(str(tmp_path / "gan50")) is True
