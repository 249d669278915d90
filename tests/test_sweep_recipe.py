"""bench/sweep_recipe.py compares rows at equal compute and one sampling setting (no training here: milliseconds)."""
import pytest

from conftest import REPO, load_bench_script

sweep_recipe = load_bench_script("sweep_recipe")


@pytest.mark.parametrize("spec", ["long=--steps 5000", "more=--minutes=9", "other=--tokenizer t.pt",
                                  "elsewhere=--out-dir /tmp/x", "fewer=--threads 2"])
def test_a_row_cannot_change_the_budget_data_or_tokenizer(spec):
    """A row that sets a flag the driver owns would no longer be at equal compute (or on the same tokens): refused."""
    with pytest.raises(ValueError, match="set by the sweep"):
        sweep_recipe.parse_row(spec)


def test_rows_differ_only_in_their_own_flags(tmp_path):
    """Two rows' train commands are equal up to the run folder, the steps and the row's flags (same data, tokenizer,
    threads); their sample commands fix the same guidance and top-p, so no run's sampling.json is used."""
    args = sweep_recipe.parse_args(["--data-path", "data", "--tokenizer", "tok.pt", "--out-root", str(tmp_path),
                                    "--cfg", "2", "--top-p", "0.9"])
    default = sweep_recipe.commands(args, *sweep_recipe.parse_row("default="), steps=700)
    wide = sweep_recipe.commands(args, *sweep_recipe.parse_row("wide=--depth 3 --width 96"), steps=500)
    strip = lambda command: [part.replace("wide", "default").replace("500", "700") for part in command]  # noqa: E731
    assert strip(wide[0]) == default[0] + ["--depth", "3", "--width", "96"]
    assert default[0][default[0].index("--steps") + 1] == "700" and wide[0][wide[0].index("--steps") + 1] == "500"
    for command in (default[1], wide[1]):
        assert command[command.index("--cfg") + 1] == "2.0" and command[command.index("--top-p") + 1] == "0.9"
    assert strip(wide[1]) == default[1] and strip(wide[2]) == default[2]


def test_table_reports_the_ratios_evaluate_wrote():
    """One table line per result, with the floor and ceiling ratios as evaluate.py computed them."""
    report = dict(judge_accuracy_samples=0.8125, frechet_distance_samples=30.0, frechet_distance_samples_over_floor=
                  12.0, frechet_distance_samples_over_reconstructions=2.5, precision_samples=0.7, recall_samples=0.4)
    text = sweep_recipe.table([dict(name="default", flags=[], steps=900, train_cpu_s=290.4, cfg=2.0, top_p=0.95,
                                      report=report)])
    line = text.splitlines()[-1]
    assert line.startswith("| default | `(defaults)` | 900 | 290 | 2, 0.95 | 81.2% | 30.0 | 12.0× | 2.50× | 0.70 / 0.40 |")
    assert len(text.splitlines()) == 3


def test_equal_compute_gives_cheaper_steps_more_of_them():
    """Rows that change only the optimisation share one cost probe; a different architecture or batch gets its own;
    the budget buys budget / (seconds per step) steps."""
    key = sweep_recipe.cost_key
    assert key([]) == key(["--base-learning-rate", "0.1", "--label-smoothing", "0.1", "--cond-drop-rate=0.2"])
    assert len({key([]), key(["--depth", "3", "--width", "96"]), key(["--depth", "3"]), key(["--batch-size", "32"]),
                key(["--ema", "0.999"])}) == 5
    assert sweep_recipe.steps_for_budget(200, 0.25) == 800 and sweep_recipe.steps_for_budget(200, 0.5) == 400


def test_small_preset_schedule_and_model_come_from_its_recipe():
    """`train_var.py --preset small` (the sweep's choice) trains its own recipe's steps at its own peak lr (a preset
    without epochs once fell back to tiny's steps), --steps still overrides them, and its VAR fits the tiny
    tokenizer with fewer parameters than tiny's."""
    import sys
    sys.path.insert(0, str(REPO))
    import train_var
    from minvar import VAR, VQVAE
    from minvar.sampling import check_pair

    recipe = train_var.RECIPES["small"]
    plan = train_var.schedule(train_var.parse_args(["--preset", "small"]), recipe, dataset_size=10_000, world_size=1)
    assert plan.steps == recipe["steps"] != train_var.RECIPES["tiny"]["steps"]
    assert plan.peak_lr == recipe["base_lr"] * recipe["global_batch"] / 256 and plan.batch_size == recipe["global_batch"]
    assert train_var.schedule(train_var.parse_args(["--preset", "small", "--steps", "7"]), recipe, 10_000, 1).steps == 7
    small, tiny = VAR.from_preset("small", num_classes=10), VAR.from_preset("tiny", num_classes=10)
    check_pair(small, VQVAE.from_preset("tiny"))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in tiny.parameters())
