"""The training recipe matches the official one: the lr/wd schedule, the weight-decay groups, the data order."""
import json
import os
import time

import pytest
import torch

from conftest import FIXTURES, require
from minvar.training.data_order import StepBatchSampler, global_batch_indices
from minvar.training.distributed import Distributed
from minvar.training.run import is_due
from minvar.training.schedule import lr_wd_at

RECIPE_FLAGS = {"d16": dict(final_lr_ratio=0.1, final_weight_decay=0.05),
                "d20": dict(final_lr_ratio=0.1, final_weight_decay=0.05),
                "d24": dict(final_lr_ratio=0.01, final_weight_decay=0.05),
                "d30": dict(final_lr_ratio=0.01, final_weight_decay=0.08)}


@pytest.mark.parametrize("model", ["d16", "d20", "d24", "d30"])
def test_lr_and_weight_decay_match_official_schedule(model):
    """lr_wd_at reproduces the official lr_wd_annealing('lin0') values recorded in train_schedule.json."""
    schedule = json.loads(require(FIXTURES / "train_schedule.json").read_text())["lr_wd_annealing_lin0"][model]
    for point in schedule["points"]:
        lr, wd = lr_wd_at(point["it"], schedule["max_it"], schedule["peak_lr"], int(schedule["warmup_iters"]),
                          **RECIPE_FLAGS[model])
        assert lr == pytest.approx(point["lr"], rel=1e-9), point
        assert wd == pytest.approx(point["wd"], rel=1e-9), point


def test_weight_decay_groups_match_official(official_tiny):
    """Which parameters decay: exactly the official groups (class_emb, word_embed, head weights decay)."""
    _, var = official_tiny
    groups = json.loads(require(FIXTURES / "train_schedule.json").read_text())["param_groups"]
    names = {id(p): n for n, p in var.named_parameters()}
    decay, no_decay = var.parameter_groups(0.05)
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(groups["wd"])
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(groups["no_wd"])


def test_data_order_is_a_permutation_per_epoch_and_split_across_ranks():
    """Each epoch visits every image once; two ranks' slices together are exactly the one-process batch."""
    n, global_batch = 10, 4
    stream = sum((global_batch_indices(s, global_batch, n, seed=3) for s in range(5)), [])  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a new permutation each epoch
    one = list(StepBatchSampler(n, 4, 3, 0, 5, Distributed(0, 1)))
    ranks = [list(StepBatchSampler(n, 2, 3, 0, 5, Distributed(r, 2))) for r in range(2)]
    for step in range(5):
        assert one[step] == ranks[0][step] + ranks[1][step]
    resumed = list(StepBatchSampler(n, 4, 3, 2, 5, Distributed(0, 1)))
    assert resumed == one[2:]  # resuming at step 2 yields the same batches as never stopping


def test_periodic_actions_run_every_n_steps_and_after_the_last():
    """`--save-every 3` over 7 steps saves after 3, 6 and 7; 0 means only after the last step (it used to divide
    by zero)."""
    assert [done for done in range(1, 8) if is_due(done, 3, 7)] == [3, 6, 7]
    assert [done for done in range(1, 8) if is_due(done, 0, 7)] == [7]
    assert [done for done in range(1, 7) if is_due(done, 2, 6)] == [2, 4, 6]


def test_ema_averages_parameters_and_copies_buffers():
    """The EMA model averages parameters (decay 0.5: halfway between old and new) and copies buffers, so VAR's
    block-causal mask keeps its -inf entries (a lerp of -inf with -inf is NaN) and the EMA model's teacher-forced
    forward stays finite."""
    from minvar.training.ema import EMA
    from minvar.var import VAR
    torch.manual_seed(0)
    var = VAR.from_preset("tiny", num_classes=3)
    ema = EMA(var, decay=0.5)
    before = [p.detach().clone() for p in var.parameters()]
    with torch.no_grad():
        for p in var.parameters():
            p.add_(1.0)
    ema.update(var)
    for old, new, averaged in zip(before, var.parameters(), ema.model.parameters()):
        assert torch.allclose(averaged, (old + new) / 2)
    assert torch.equal(ema.model.attn_bias_for_masking, var.attn_bias_for_masking)
    assert torch.isinf(ema.model.attn_bias_for_masking).any()
    x = torch.randn(2, var.L - 1, var.config.code_dim)
    logits = ema.model(torch.tensor([0, 1]), x)
    assert torch.isfinite(logits).all()


def test_var_checkpoints_with_nan_are_refused_and_old_ema_masks_are_repaired(tmp_path):
    """A NaN anywhere in a checkpoint is refused with the key named. An EMA copy whose block-causal mask holds NaN
    (what minvar wrote before the EMA copied buffers) loads with the live model's buffers and gives the live model's
    logits, since mask buffers are not learned."""
    from minvar import VAR, VARConfig
    from minvar.io.checkpoint import CheckpointError, load_var, save_checkpoint
    torch.manual_seed(0)
    config = VARConfig(depth=2, width=32, num_heads=2, num_classes=3, vocab_size=16, code_dim=4, patch_nums=(1, 2, 3))
    var = VAR(config).eval()
    ema_weights = {name: tensor.clone() for name, tensor in var.state_dict().items()}
    ema_weights["attn_bias_for_masking"] = torch.where(ema_weights["attn_bias_for_masking"].isinf(),
                                                       torch.nan, ema_weights["attn_bias_for_masking"])
    path = str(tmp_path / "var.pt")
    save_checkpoint(path, "minvar-var", var, config, 1, ema_model=ema_weights)
    labels, x = torch.tensor([0, 2]), torch.randn(2, var.L - 1, 4)
    with torch.no_grad():
        expected = var(labels, x)
        got = load_var(path)(labels, x)
    assert torch.isfinite(got).all() and torch.equal(got, expected)
    broken = {name: tensor.clone() for name, tensor in var.state_dict().items()}
    broken["head.weight"][0, 0] = torch.nan
    save_checkpoint(path, "minvar-var", var, config, 1, ema_model=broken)
    with pytest.raises(CheckpointError, match="head.weight.*NaN"):
        load_var(path)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="busy_cores reads /proc/stat (Linux)")
def test_busy_cores_sees_a_spinning_process_and_set_threads_warns_only_when_cores_are_taken(monkeypatch, capsys):
    """busy_cores measures the cores busy now (not the lagging load average): a child process spinning on one core
    shows up as at least half a core. set_threads warns when its threads exceed the free cores, and not otherwise."""
    import subprocess
    import sys

    from minvar.training import precision
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        assert precision.busy_cores(window=0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(precision, "busy_cores", lambda: float(os.cpu_count()))  # every core taken
        assert precision.set_threads(1) == 1
        assert "--threads 1" not in capsys.readouterr().out  # 1 thread never exceeds the one core always assumed free
        if os.cpu_count() >= 2:
            precision.set_threads(2)
            assert "warning: torch uses 2 CPU threads" in capsys.readouterr().out
        monkeypatch.setattr(precision, "busy_cores", lambda: 0.0)  # an idle machine
        precision.set_threads(os.cpu_count())
        assert "warning" not in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
