"""Measure samples (and the tokenizer) against real images: judge accuracy, Fréchet distance, precision/recall.

For the built-in shapes dataset the feature extractor is the "judge", a small classifier trained on real images
(cached in --judge). It reports, each beside its floor or ceiling:
  * class accuracy: share of samples that the judge assigns to their conditioning class, beside its accuracy on
    real held-out images and on tokenizer reconstructions of them (the ceiling a VAR on that tokenizer can reach);
  * Fréchet distance in judge-feature space, samples vs real, beside real vs real (two disjoint real sets: the floor);
  * precision / recall with k=3 nearest-neighbour manifolds (Kynkäänniemi et al. 2019), beside real vs real.
Accuracy alone can be fooled (one perfect image per class would score 100%); FD and recall catch a lack of variety.

With --inception-weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, never downloaded), the same
numbers use Inception-v3 pool features, plus the Inception Score. NOTE: ImageNet numbers comparable with papers
come from OpenAI's guided-diffusion evaluator run on sample.py's samples.npz and its reference batch.

    python evaluate.py                                  # the quickstart's runs/samples/samples.npz
    python evaluate.py --samples my.npz --data-path /data/imagenet/val --inception-weights pt_inception.pth
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

from minvar.checkpoint import CheckpointError, load_tokenizer
from minvar.data import DataError, build_dataset, from_uint8_images
from minvar.judge import evaluate_accuracy, judge_predict, load_judge, save_judge, train_judge
from minvar.metrics import frechet_distance_from_features, inception_score, precision_recall
from minvar.training import positive_int


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--samples", default="runs/samples/samples.npz", help="sample.py's samples.npz")
    parser.add_argument("--data-path", default=None, help="real images (folder); absent: the built-in dataset")
    parser.add_argument("--tokenizer", default="runs/tokenizer/checkpoint.pt", help="also score tokenizer "
                        "reconstructions of the real images (skipped if the file is absent)")
    parser.add_argument("--judge", default="runs/judge.pt", help="judge classifier file; trained and saved "
                        "there if absent")
    parser.add_argument("--judge-steps", type=positive_int, default=600, help="training steps of a new judge")
    parser.add_argument("--inception-weights", default=None, help="pytorch-fid Inception weights file: use "
                        "Inception features instead of the judge's")
    parser.add_argument("--num-real", type=positive_int, default=1500, help="real images per reference set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--out", default=None, help="JSON report path (default: beside the samples)")
    return parser.parse_args(argv)


def stack(dataset, count: int) -> tuple:
    """The first `count` items of a dataset as (images (N, 3, H, W), labels (N,))."""
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def data_fingerprint(data_path, train_set, image_size: int) -> dict:
    """What a judge is trained on, to recognise a judge file trained on other data.

    The built-in dataset is a pure function of its parameters; a folder is described by its listing (each image's
    path relative to the folder and its size in bytes), hashed, so that an added, removed or replaced image counts.
    """
    if data_path is None:
        return {"dataset": "built-in shapes", "num_images": len(train_set), "image_size": image_size,
                "seed": train_set.seed}
    listing = "\n".join(f"{os.path.relpath(path, train_set.root)}\t{os.path.getsize(path)}"
                        for path, _ in train_set.samples)
    return {"dataset": "folder", "root": os.path.abspath(train_set.root), "files": len(train_set.samples),
            "listing_sha256": hashlib.sha256(listing.encode()).hexdigest(), "image_size": image_size}


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.samples):
        raise SystemExit(f"error: {args.samples} not found: run sample.py first (or pass --samples)")
    data = np.load(args.samples)
    fake = from_uint8_images(data["arr_0"])  # (N, 3, H, W) in [-1, 1]
    fake_labels = torch.from_numpy(data["labels"]) if "labels" in data else None
    size = fake.shape[-1]

    # 1. real reference sets: two disjoint ones, so that "real vs real" gives the floor of every distance
    try:
        real_set = build_dataset(args.data_path, size, train=False, num_images=2 * args.num_real, seed=args.seed)
        train_set = build_dataset(args.data_path, size, train=True, num_images=20_000, seed=args.seed)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    real, real_labels = stack(real_set, 2 * args.num_real)
    half = len(real) // 2
    real_a, real_b, labels_a = real[:half], real[half:], real_labels[:half]

    # 2. the judge (always: class accuracy needs a classifier of the real classes)
    # A judge file remembers the data it was trained on: scoring other data with it would measure the wrong classes.
    fingerprint = data_fingerprint(args.data_path, train_set, size)
    judge = load_judge(args.judge) if os.path.isfile(args.judge) else None
    if judge is not None and judge.trained_on != fingerprint:
        print(f"{args.judge} was trained on other data ({judge.trained_on or 'not recorded'}); this evaluation's "
              f"data is {fingerprint}: training a new judge and overwriting {args.judge}")
        judge = None
    if judge is None:
        judge = train_judge(train_set, steps=args.judge_steps, seed=args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.judge)), exist_ok=True)
        save_judge(judge, args.judge, data=fingerprint)
    report = {"samples": len(fake), "real_per_set": half, "judge_accuracy_real": evaluate_accuracy(judge, real_a,
                                                                                                 labels_a)}
    if os.path.isfile(args.tokenizer):
        try:
            vae = load_tokenizer(args.tokenizer)
        except CheckpointError as error:
            raise SystemExit(f"error: --tokenizer: {error}")
        if vae.config.image_size == size:
            with torch.no_grad():
                reconstructions = torch.cat([vae.idx_to_img(vae.img_to_idx(real_a[i:i + 256]))
                                             for i in range(0, half, 256)])
            report["judge_accuracy_reconstructions"] = evaluate_accuracy(judge, reconstructions, labels_a)
    if fake_labels is not None and int(fake_labels.max()) < judge.config.num_classes:
        hits = judge_predict(judge, fake)[0].argmax(dim=-1) == fake_labels  # (N,) judged as their own class
        report["judge_accuracy_samples"] = hits.float().mean().item()
        # per class: which classes the model draws well (e.g. rings) and which it does not (e.g. triangles)
        names = getattr(real_set, "class_names", None) or [str(c) for c in range(judge.config.num_classes)]
        report["judge_accuracy_samples_per_class"] = {names[c]: round(hits[fake_labels == c].float().mean().item(), 4)
                                                      for c in sorted(set(fake_labels.tolist()))}

    # 3. distribution metrics in the chosen feature space
    if args.inception_weights:
        from minvar.inception import InceptionV3Features
        extractor = InceptionV3Features(args.inception_weights)
        features = lambda images: torch.cat([extractor(images[i:i + 50])[1] for i in range(0, len(images), 50)])
        probs_fake = torch.cat([extractor(fake[i:i + 50])[0] for i in range(0, len(fake), 50)])
        report["inception_score"] = inception_score(probs_fake)[0]
        report["feature_space"] = "inception-v3 pool3"
    else:
        features = lambda images: judge_predict(judge, images)[1]
        report["feature_space"] = "judge penultimate layer"
    feats_a, feats_b, feats_fake = features(real_a), features(real_b), features(fake)
    report["frechet_distance_samples"] = frechet_distance_from_features(feats_a, feats_fake)
    report["frechet_distance_real_floor"] = frechet_distance_from_features(feats_a, feats_b)
    report["precision_samples"], report["recall_samples"] = precision_recall(feats_a, feats_fake, k=3)
    report["precision_real"], report["recall_real"] = precision_recall(feats_a, feats_b, k=3)

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples)), "evaluation.json")
    with open(out, "w") as file:
        json.dump(report, file, indent=1)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
