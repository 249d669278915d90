"""Tests for minvar/evaluation/judge.py: the shapes classifier used to score samples and extract features."""

import pytest
import torch

from minvar.io.data import ShapesDataset
from minvar.evaluation.judge import (Judge, JudgeConfig, augment, evaluate_accuracy, judge_predict, load_judge, save_judge,
                          train_judge)

TINY = JudgeConfig(num_classes=15, image_size=32, width=16, feature_dim=32)  # ~30 ms per training step on a CPU


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for this module


def held_out_batch(count=150, image_size=32, seed=99):
    """`count` class-balanced held-out shapes as an image batch and a label tensor."""
    dataset = ShapesDataset(count, image_size=image_size, seed=seed)
    images, labels = zip(*(dataset[i] for i in range(count)))
    return torch.stack(images), torch.tensor(labels)


def test_short_training_beats_chance_on_held_out_data():
    """Forty steps already classify unseen shapes far above chance (1/15; measured ~0.3, colour is learnt first):
    broken labels, loss or optimizer steps would leave it near chance."""
    judge = train_judge(ShapesDataset(2000, image_size=32), steps=40, batch_size=32, learning_rate=1e-2,
                        progress=False, config=TINY)
    images, labels = held_out_batch()
    accuracy = evaluate_accuracy(judge, images, labels)
    assert accuracy > 3 / 15, f"held-out accuracy {accuracy:.3f} is too close to chance"


def test_training_is_seeded_and_leaves_global_rng_alone():
    """The same seed gives the same weights, and training neither reads nor advances the global torch RNG."""
    dataset = ShapesDataset(100, image_size=32)
    state = torch.random.get_rng_state()
    first = train_judge(dataset, steps=2, batch_size=8, seed=5, progress=False, config=TINY)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    second = train_judge(dataset, steps=2, batch_size=8, seed=5, progress=False, config=TINY)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name


@pytest.mark.parametrize("image_size", [32, 64])
def test_output_shapes_and_size_check(image_size):
    """Logits are (B, N) and features (B, F) at 32 and 64 px; an image of the wrong size is refused, not misjudged."""
    judge = Judge(JudgeConfig(num_classes=7, image_size=image_size, width=8, feature_dim=16)).eval()
    images = torch.rand(3, 3, image_size, image_size) * 2 - 1
    assert judge(images).shape == (3, 7) and judge.features(images).shape == (3, 16)
    with pytest.raises(ValueError, match="expects"):
        judge(torch.zeros(1, 3, image_size // 2, image_size // 2))


def test_predictions_do_not_depend_on_batching_or_mode():
    """judge_predict gives each image the same probabilities and features whatever the batch size, even for a judge
    left in training mode (BatchNorm must use running statistics), and restores that mode."""
    judge = Judge(TINY)
    judge(torch.rand(16, 3, 32, 32) * 2 - 1)  # move BatchNorm's running statistics away from their initial values
    images, _ = held_out_batch(count=20)
    probs, features = judge_predict(judge, images, batch_size=20)
    probs_small, features_small = judge_predict(judge, images, batch_size=3)
    assert judge.training
    assert torch.allclose(probs, probs_small, atol=1e-6) and torch.allclose(features, features_small, atol=1e-5)
    assert probs.shape == (20, 15) and features.shape == (20, TINY.feature_dim)
    assert torch.allclose(probs.sum(dim=1), torch.ones(20), atol=1e-5)


def test_evaluate_accuracy_counts_agreement():
    """Accuracy is the share of argmax predictions equal to the labels: 1 against the judge's own predictions,
    0 against labels that all differ from them, 1/2 when half match."""
    judge = Judge(TINY).eval()
    images, _ = held_out_batch(count=10)
    predictions = judge_predict(judge, images)[0].argmax(dim=1)
    assert evaluate_accuracy(judge, images, predictions) == 1.0
    assert evaluate_accuracy(judge, images, (predictions + 1) % 15) == 0.0
    half = torch.cat([predictions[:5], (predictions[5:] + 1) % 15])
    assert evaluate_accuracy(judge, images, half.tolist(), batch_size=4) == pytest.approx(0.5)


def test_augmentation_is_seeded_and_stays_in_range():
    """Blur and noise are reproducible from the generator, keep images in [-1, 1], and change them only mildly (the
    mean colour survives, so a red shape stays red)."""
    images, _ = held_out_batch(count=16)
    first = augment(images, torch.Generator().manual_seed(0))
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and first.shape == images.shape
    assert first.min() >= -1 and first.max() <= 1 and not torch.equal(first, images)
    assert torch.allclose(first.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=0.05)


def test_save_load_round_trip(tmp_path):
    """A saved judge loads (on the CPU, in eval mode) with its config and gives identical logits."""
    judge = Judge(TINY)
    judge(torch.rand(8, 3, 32, 32))  # non-trivial BatchNorm buffers, which must be saved too
    judge.eval()
    save_judge(judge, tmp_path / "judge.pt")
    loaded = load_judge(tmp_path / "judge.pt")
    images, _ = held_out_batch(count=6)
    assert loaded.config == TINY and not loaded.training
    assert torch.equal(loaded(images), judge(images))


@pytest.mark.parametrize("content", [{"kind": "minvar-var", "model": {}}, torch.zeros(3)])
def test_loading_another_kind_of_file_is_a_clear_error(tmp_path, content):
    """A checkpoint of another kind (or not a dict at all) raises an error naming what it found and what to pass."""
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minvar judge.*save_judge"):
        load_judge(tmp_path / "other.pt")
