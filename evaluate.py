"""Measure samples (and the tokenizer) against real images: judge accuracy, Fréchet distance, precision/recall.

For the built-in shapes dataset the feature extractor is the "judge", a small classifier trained on real images
(cached in --judge). It reports, each beside its floor or ceiling:
  * class accuracy: share of samples that the judge assigns to their conditioning class, beside its accuracy on
    real held-out images and on tokenizer reconstructions of them (the ceiling a VAR on that tokenizer can reach);
  * Fréchet distance in judge-feature space, samples vs real, beside real vs real (the floor) and tokenizer
    reconstructions vs real (the ceiling: a VAR on this tokenizer cannot do better than its reconstructions);
  * precision / recall with k=3 nearest-neighbour manifolds (Kynkäänniemi et al. 2019), beside the same two.
Accuracy alone can be fooled (one perfect image per class would score 100%); FD and recall catch a lack of variety.

Matched N: the Fréchet distance is biased upward when few images are compared (a noisy covariance adds distance),
so a floor from 1,500 real images beside 240 samples would overstate the gap. Here the samples, the floor's second
real set and the reconstructions all have as many images as the samples, and all three are compared with the same
reference set of --num-real held-out real images.

With --inception-weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, never downloaded), the same
numbers use Inception-v3 pool features, plus the Inception Score. NOTE: ImageNet numbers comparable with papers
come from OpenAI's guided-diffusion evaluator run on sample.py's samples.npz and its reference batch.

    python evaluate.py                                  # the quickstart's runs/samples/samples.npz
    python evaluate.py --samples my.npz --data-path /data/imagenet/val --inception-weights pt_inception.pth
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

from minvar.checkpoint import CheckpointError, load_tokenizer
from minvar.data import DataError, build_dataset
from minvar.judge import evaluate_accuracy, judge_predict, load_judge, save_judge, train_judge
from minvar.metrics import compare_features, extract_features


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", default="runs/samples/samples.npz", help="sample.py's samples.npz")
    parser.add_argument("--data-path", default=None, help="real images (folder); absent: the built-in dataset")
    parser.add_argument("--tokenizer", default="runs/tokenizer/checkpoint.pt", help="also score tokenizer "
                        "reconstructions of the real images (skipped if the file is absent)")
    parser.add_argument("--judge", default="runs/judge.pt", help="judge classifier file; trained and saved "
                        "there if absent")
    parser.add_argument("--judge-steps", type=int, default=600, help="training steps of a new judge")
    parser.add_argument("--inception-weights", default=None, help="pytorch-fid Inception weights file: use "
                        "Inception features instead of the judge's")
    parser.add_argument("--num-real", type=int, default=1500, help="real images in the reference set; the floor's "
                        "second real set and the reconstructions have as many images as the samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--out", default=None, help="JSON report path (default: beside the samples)")
    return parser.parse_args(argv)


def stack(dataset, count: int) -> tuple:
    """The first `count` items of a dataset as (images (N, 3, H, W), labels (N,))."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.samples):
        raise SystemExit(f"error: {args.samples} not found: run sample.py first (or pass --samples)")
    data = np.load(args.samples)
    fake = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (N, 3, H, W) in [-1, 1]
    fake_labels = torch.from_numpy(data["labels"]) if "labels" in data else None
    size = fake.shape[-1]

    # 1. real images: a reference set, and a second held-out set of as many images as the samples (matched N)
    matched = len(fake)
    try:
        real_set = build_dataset(args.data_path, size, train=False, num_images=args.num_real + matched, seed=args.seed)
        train_set = build_dataset(args.data_path, size, train=True, num_images=20_000, seed=args.seed)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    reference_count = min(args.num_real, len(real_set) - matched)
    if reference_count < 4:
        raise SystemExit(f"error: {len(real_set)} held-out real images cannot hold a reference set beside "
                         f"{matched} matched ones: sample fewer images (sample.py --per-class) or add real images")
    real, real_labels = stack(real_set, reference_count + matched)
    reference, held_out, held_out_labels = real[:reference_count], real[reference_count:], real_labels[reference_count:]

    # 2. the judge (always: class accuracy needs a classifier of the real classes)
    if os.path.isfile(args.judge):
        judge = load_judge(args.judge)
    else:
        judge = train_judge(train_set, steps=args.judge_steps, seed=args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.judge)), exist_ok=True)
        save_judge(judge, args.judge)
    report = {"samples": len(fake), "real_reference": reference_count, "real_matched": len(held_out),
              "judge_accuracy_real": evaluate_accuracy(judge, held_out, held_out_labels)}
    reconstructions = None
    if os.path.isfile(args.tokenizer):
        try:
            vae = load_tokenizer(args.tokenizer)
        except CheckpointError as error:
            raise SystemExit(f"error: --tokenizer: {error}")
        if vae.config.image_size == size:
            with torch.no_grad():
                reconstructions = torch.cat([vae.idx_to_img(vae.img_to_idx(held_out[i:i + 256]))
                                             for i in range(0, len(held_out), 256)])  # (matched, 3, H, W)
            report["judge_accuracy_reconstructions"] = evaluate_accuracy(judge, reconstructions, held_out_labels)
    if fake_labels is not None and int(fake_labels.max()) < judge.config.num_classes:
        hits = judge_predict(judge, fake)[0].argmax(dim=-1) == fake_labels  # (N,) judged as their own class
        report["judge_accuracy_samples"] = hits.float().mean().item()
        # per class: which classes the model draws well (e.g. rings) and which it does not (e.g. triangles)
        names = getattr(real_set, "class_names", None) or [str(c) for c in range(judge.config.num_classes)]
        report["judge_accuracy_samples_per_class"] = {names[c]: round(hits[fake_labels == c].float().mean().item(), 4)
                                                      for c in sorted(set(fake_labels.tolist()))}

    # 3. distribution metrics in the chosen feature space, every set against the same reference features
    if args.inception_weights:
        from minvar.inception import InceptionV3Features
        extractor = InceptionV3Features(args.inception_weights)  # images -> (class probabilities, pool features)
        report["feature_space"] = "inception-v3 pool3"
    else:
        extractor = lambda images: (None, judge_predict(judge, images)[1])  # the judge's penultimate layer
        report["feature_space"] = "judge penultimate layer"
    _, reference_features = extract_features(extractor, reference, batch_size=50)  # (reference_count, D)
    compared = {"samples": fake, "real": held_out}
    if reconstructions is not None:
        compared["reconstructions"] = reconstructions
    for name, images in compared.items():
        probs, features = extract_features(extractor, images, batch_size=50)  # (matched, C) or None, (matched, D)
        metrics = compare_features(reference_features, features, probs if name == "samples" else None, k=3)
        suffix = "real_floor" if name == "real" else name
        report[f"frechet_distance_{suffix}"] = metrics["fid"]
        report[f"precision_{name}"], report[f"recall_{name}"] = metrics["precision"], metrics["recall"]
        if "inception_score" in metrics:
            report["inception_score"] = metrics["inception_score"]
    # the two ratios the issue asks about: how far the samples are from real images and from the tokenizer's best
    report["frechet_distance_samples_over_floor"] = report["frechet_distance_samples"] / max(
        report["frechet_distance_real_floor"], 1e-12)
    if reconstructions is not None:
        report["frechet_distance_samples_over_reconstructions"] = report["frechet_distance_samples"] / max(
            report["frechet_distance_reconstructions"], 1e-12)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples)), "evaluation.json")
    with open(out, "w") as file:
        json.dump(report, file, indent=1)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
