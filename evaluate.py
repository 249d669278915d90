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
    python evaluate.py --tokenizer-only 750             # the ceiling alone, before any VAR is trained

Sampling settings chosen by measurement: --sweep generates --sweep-per-class samples per class for every
combination of guidance, top-k and top-p (a seed of their own, apart from sample.py's), scores each as above, and
picks the lowest Fréchet distance among the settings whose judge accuracy is at least --sweep-min-accuracy (or
within 2 points of the best setting's, if none reaches it). The choice goes to sampling.json beside the VAR
checkpoint, and sample.py uses it unless told otherwise:
    python evaluate.py --sweep                          # the quickstart's runs/var/checkpoint.pt
"""
import argparse
import functools
import json
import os
import sys

import numpy as np
import torch

from minvar.io.checkpoint import CheckpointError, load_tokenizer
from minvar.io.data import DataError, build_dataset, dataset_fingerprint, from_uint8_images, to_uint8_images
from minvar.evaluation.judge import judge_predict, load_judge, save_judge, train_judge
from minvar.evaluation.metrics import compare_features, extract_features
from minvar.sampling import generate
from minvar.training.arguments import positive_int, probability


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
    parser.add_argument("--num-real", type=positive_int, default=1500, help="real images in the reference set; the floor's "
                        "second real set and the reconstructions have as many images as the samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in dataset")
    parser.add_argument("--out", default=None, help="JSON report path (default: beside the samples)")
    parser.add_argument("--tokenizer-only", type=positive_int, default=None, metavar="N",
                        help="score only --tokenizer's reconstructions of N held-out real images, beside the real "
                             "floor at the same N (no samples needed); writes ceiling.json beside the tokenizer")
    # sweep of the sampling settings
    parser.add_argument("--sweep", action="store_true", help="sweep guidance and top-k/top-p of --checkpoint "
                        "instead of scoring --samples; writes sampling.json beside the checkpoint")
    parser.add_argument("--checkpoint", default="runs/var/checkpoint.pt", help="the VAR run to sweep")
    parser.add_argument("--sweep-cfg", default="2,3,4,5", help="guidance strengths to try (comma-separated)")
    parser.add_argument("--sweep-top-k", default="0", help="top-k values to try (0: off)")
    parser.add_argument("--sweep-top-p", default="0.6,0.8,0.95", help="top-p values to try (0: off)")
    parser.add_argument("--sweep-per-class", type=positive_int, default=20, help="samples per class for each setting")
    parser.add_argument("--sweep-min-accuracy", type=probability, default=0.95, help="judge accuracy a setting needs "
                        "to be chosen for its Fréchet distance")
    parser.add_argument("--sweep-seed", type=int, default=1_000, help="sampling seed of the sweep (sample.py's "
                        "report uses its own --seed, 0 by default, so the choice is scored on other samples)")
    args = parser.parse_args(argv)
    if args.tokenizer_only and args.sweep:
        parser.error("--tokenizer-only scores the tokenizer alone and --sweep scores samples: choose one")
    return args


def stack(dataset, count: int, seed: int = 0) -> tuple:
    """`count` items of a dataset in a seeded random order, as (images (N, 3, H, W), labels (N,)).

    Random, not the first ones: an image folder lists its classes one after another, so a prefix would hold only
    the first classes, and two slices of it (reference and floor) would hold different classes.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    items = [dataset[i] for i in order]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def real_images(args, size: int, matched: int):
    """(reference (M, 3, H, W), held-out set of `matched` images and their labels, the training set, class names)."""
    try:
        real_set = build_dataset(args.data_path, size, train=False, num_images=args.num_real + matched, seed=args.seed)
        train_set = build_dataset(args.data_path, size, train=True, num_images=20_000, seed=args.seed)
    except DataError as error:
        raise SystemExit(f"error: {error}")
    reference_count = min(args.num_real, len(real_set) - matched)
    if reference_count < 4:
        raise SystemExit(f"error: {len(real_set)} held-out real images cannot hold a reference set beside "
                         f"{matched} matched ones: sample fewer images (sample.py --per-class) or add real images")
    real, real_labels = stack(real_set, reference_count + matched, args.seed)
    names = getattr(real_set, "class_names", None)
    return real[:reference_count], real[reference_count:], real_labels[reference_count:], train_set, names


def get_judge(args, train_set):
    """The judge from its file if it was trained on this data, else trained on the real training images and saved.

    A judge file remembers the data it was trained on: scoring other data with it would measure the wrong classes.
    """
    fingerprint = dataset_fingerprint(train_set)  # the parameters of the shapes, or a hash of the folder's listing
    judge = load_judge(args.judge) if os.path.isfile(args.judge) else None
    if judge is not None and judge.trained_on != fingerprint:
        print(f"{args.judge} was trained on other data ({judge.trained_on or 'not recorded'}); this evaluation's "
              f"data is {fingerprint}: training a new judge and overwriting {args.judge}")
        judge = None
    if judge is None:
        judge = train_judge(train_set, steps=args.judge_steps, seed=args.seed)
        os.makedirs(os.path.dirname(os.path.abspath(args.judge)), exist_ok=True)
        save_judge(judge, args.judge, data=fingerprint)
    return judge


def score(judge, extractor, reference_features, images, labels=None, names=None) -> dict:
    """Judge accuracy (given labels) and distances of `images` to the reference features."""
    result = {}
    if labels is not None and int(labels.max()) < judge.config.num_classes:
        hits = judge_predict(judge, images)[0].argmax(dim=-1) == labels  # (N,) judged as their own class
        result["judge_accuracy"] = hits.float().mean().item()
        names = names or [str(c) for c in range(judge.config.num_classes)]
        # per class: which classes the model draws well (e.g. rings) and which it does not (e.g. triangles)
        result["judge_accuracy_per_class"] = {names[c]: round(hits[labels == c].float().mean().item(), 4)
                                              for c in sorted(set(labels.tolist()))}
    probs, features = extract_features(extractor, images, batch_size=50)  # (N, C) or None, (N, D)
    result.update(compare_features(reference_features, features, probs, k=3))
    return result


def parse_values(text: str, kind):
    """'2,3,4' -> [2, 3, 4] of `kind`, with an error that names the flag's text."""
    try:
        return [kind(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise SystemExit(f"error: cannot read {text!r} as comma-separated {kind.__name__} values")


def ceiling_tokenizer(args):
    """--tokenizer-only: the tokenizer to score, which must exist (without it there is nothing to measure)."""
    if not (args.tokenizer and os.path.isfile(args.tokenizer)):
        raise SystemExit(f"error: --tokenizer-only needs a tokenizer checkpoint, and {args.tokenizer} is not a file: "
                         f"train one (train_tokenizer.py) or pass --tokenizer")
    try:
        return load_tokenizer(args.tokenizer)
    except CheckpointError as error:
        raise SystemExit(f"error: --tokenizer: {error}")


def sweep_models(args):
    """(VAR, tokenizer) of the --checkpoint run to sweep, on the CPU."""
    from sample import load_models  # the scripts sit side by side; sample.py owns the checkpoint loading
    try:
        run = argparse.Namespace(checkpoint=args.checkpoint, pretrained=None, tokenizer=None, no_ema=False)
        var, vae, _ = load_models(run, torch.device("cpu"))
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: --checkpoint {args.checkpoint}: {error}")
    return var, vae


def load_samples(path: str):
    """(samples (N, 3, H, W) in [-1, 1], their labels (N,) or None) from a sample.py samples.npz."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: {path} not found: run sample.py first (or pass --samples)")
    data = np.load(path)
    fake = from_uint8_images(data["arr_0"])
    return fake, (torch.from_numpy(data["labels"]) if "labels" in data else None)


def feature_extractor(args, judge):
    """(images -> (class probabilities or None, features), the name of the feature space)."""
    if args.inception_weights:
        from minvar.evaluation.inception import InceptionV3Features
        return InceptionV3Features(args.inception_weights), "inception-v3 pool3"
    penultimate = lambda images: (None, judge_predict(judge, images)[1])  # noqa: E731 (the judge's features)
    return penultimate, "judge penultimate layer"


def reconstruction_tokenizer(args, vae):
    """The tokenizer whose reconstructions are the ceiling: the one already loaded (the swept run's own, or
    --tokenizer-only's), else --tokenizer if it exists."""
    if vae is not None:
        return vae
    if args.tokenizer and os.path.isfile(args.tokenizer):
        try:
            return load_tokenizer(args.tokenizer)
        except CheckpointError as error:
            raise SystemExit(f"error: --tokenizer: {error}")
    return None


def floor_and_ceiling(args, vae, measure, held_out, held_out_labels, size: int) -> dict:
    """The report's floor (held-out real images vs the reference) and ceiling (tokenizer reconstructions of them)."""
    report = {}
    real_scores = measure(held_out, held_out_labels)
    report["judge_accuracy_real"] = real_scores["judge_accuracy"]
    report["judge_accuracy_real_per_class"] = real_scores["judge_accuracy_per_class"]
    report["frechet_distance_real_floor"] = real_scores["fid"]
    report["precision_real"], report["recall_real"] = real_scores["precision"], real_scores["recall"]
    tokenizer = reconstruction_tokenizer(args, vae)
    if tokenizer is not None and tokenizer.config.image_size == size:
        with torch.no_grad():
            reconstructions = torch.cat([tokenizer.idx_to_img(tokenizer.img_to_idx(held_out[i:i + 256]))
                                         for i in range(0, len(held_out), 256)])  # (matched, 3, H, W)
        rec_scores = measure(reconstructions, held_out_labels)
        report["judge_accuracy_reconstructions"] = rec_scores["judge_accuracy"]
        report["judge_accuracy_reconstructions_per_class"] = rec_scores["judge_accuracy_per_class"]
        report["frechet_distance_reconstructions"] = rec_scores["fid"]
        report["precision_reconstructions"] = rec_scores["precision"]
        report["recall_reconstructions"] = rec_scores["recall"]
    return report


def sweep(args, var, vae, labels, measure) -> list:
    """One report row per (guidance, top-k, top-p) setting: its samples of `labels`, scored."""
    rows = []
    settings = [(cfg, top_k, top_p) for cfg in parse_values(args.sweep_cfg, float)
                for top_k in parse_values(args.sweep_top_k, int) for top_p in parse_values(args.sweep_top_p, float)]
    for cfg, top_k, top_p in settings:
        with torch.no_grad():
            images = torch.cat([generate(var, vae, labels[i:i + 100].tolist(), cfg=cfg, top_k=top_k,
                                         top_p=top_p, seed=args.sweep_seed + i)
                                for i in range(0, len(labels), 100)]) * 2 - 1  # (N, 3, H, W) in [-1, 1]
        # the same uint8 rounding as samples.npz, so a setting scores as sample.py's files would
        images = from_uint8_images(to_uint8_images(images))
        result = measure(images, labels)
        row = {"cfg": cfg, "top_k": top_k, "top_p": top_p, "judge_accuracy": result.get("judge_accuracy"),
               "frechet_distance": result["fid"], "precision": result["precision"], "recall": result["recall"]}
        rows.append(row)
        print(json.dumps(row))
    return rows


def choose(rows: list, min_accuracy: float) -> dict:
    """The report's choice: the lowest Fréchet distance among the settings accurate enough."""
    # the constraint: --sweep-min-accuracy, or, if no setting reaches it, within 2 points of the best setting
    # (differences of a point are noise at a few hundred samples; a bare "most accurate" would pick noise)
    # (accuracies are counts / N, so compare with a tolerance: 14/100 - 0.02 is a hair above 12/100 in floats)
    tolerance = 1e-9
    best_accuracy = max(row["judge_accuracy"] or 0 for row in rows)
    needed = min_accuracy if best_accuracy >= min_accuracy - tolerance else best_accuracy - 0.02
    eligible = [row for row in rows if (row["judge_accuracy"] or 0) >= needed - tolerance]
    best = min(eligible, key=lambda row: row["frechet_distance"])
    return {"chosen": {key: best[key] for key in ("cfg", "top_k", "top_p")},
            "chosen_by": f"lowest Fréchet distance among the settings with judge accuracy >= {needed:.4f}"}


def add_sample_scores(report: dict, result: dict) -> None:
    """The samples' scores into the report, and how far they are from real images and from the tokenizer."""
    if "judge_accuracy" in result:
        report["judge_accuracy_samples"] = result["judge_accuracy"]
        report["judge_accuracy_samples_per_class"] = result["judge_accuracy_per_class"]
    report["frechet_distance_samples"] = result["fid"]
    report["precision_samples"], report["recall_samples"] = result["precision"], result["recall"]
    if "inception_score" in result:
        report["inception_score"] = result["inception_score"]
    report["frechet_distance_samples_over_floor"] = report["frechet_distance_samples"] / max(
        report["frechet_distance_real_floor"], 1e-12)
    if "frechet_distance_reconstructions" in report:
        report["frechet_distance_samples_over_reconstructions"] = report["frechet_distance_samples"] / max(
            report["frechet_distance_reconstructions"], 1e-12)


def diagnose_classes(report: dict, worst: int = 5) -> list:
    """Per class: where it loses its identity, in the tokenizer or in the transformer.

    The judge's accuracy on real images of a class is what the class can reach at all; on the tokenizer's
    reconstructions of the same images, what is left after tokenization (real - reconstructions: the tokenizer's
    loss); on the samples, what the transformer draws (reconstructions - samples: the transformer's loss, since a
    sample is at best a reconstruction). Returns the `worst` classes by total loss (real - samples), worst first.
    """
    real = report.get("judge_accuracy_real_per_class", {})
    reconstructed = report.get("judge_accuracy_reconstructions_per_class", {})
    sampled = report.get("judge_accuracy_samples_per_class", {})
    rows = []
    for name in sampled:
        row = {"class": name, "real": real.get(name), "reconstructions": reconstructed.get(name),
               "samples": sampled[name]}
        if row["real"] is not None and row["reconstructions"] is not None:
            row["tokenizer_loss"] = round(row["real"] - row["reconstructions"], 4)
            row["transformer_loss"] = round(row["reconstructions"] - row["samples"], 4)
            row["blame"] = "tokenizer" if row["tokenizer_loss"] > row["transformer_loss"] else "transformer"
        rows.append(row)
    rows.sort(key=lambda row: (row["real"] if row["real"] is not None else 1.0) - row["samples"], reverse=True)
    return rows[:worst]


def print_diagnosis(rows: list) -> None:
    """The worst classes as a table: judged right on real images, reconstructions and samples, and who lost it."""
    if not rows:
        return
    print("classes that lose most (judged right: real / reconstructions / samples; the larger loss is to blame):")
    def percent(value):
        return "    -" if value is None else f"{100 * value:5.1f}%"

    for row in rows:
        print(f"  {row['class']:<24} {percent(row['real'])} / {percent(row['reconstructions'])} / "
              f"{percent(row['samples'])}   {row.get('blame', '')}")


def write_report(report: dict, out: str) -> None:
    """The report as JSON at `out`, and one printed line per number (the sweep's rows were printed as they came)."""
    with open(out, "w") as file:
        json.dump(report, file, indent=1)
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key not in ("sweep", "worst_classes") and not key.endswith("_per_class"):
            print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    print_diagnosis(report.get("worst_classes", []))
    print(f"wrote {out}")


def main(argv=None) -> int:
    """Evaluate; returns the exit status: 0, or 130 after a Ctrl-C (one line, no traceback)."""
    args = parse_args(argv)
    try:
        measure_and_report(args)
    except KeyboardInterrupt:
        print(f"\nevaluate.py: stopped by Ctrl-C before the report was written; kept: the judge {args.judge} if its "
              f"training had finished, and the sweep rows printed above")
        return 130
    return 0


def measure_and_report(args) -> None:
    # 1. what is measured: sample.py's samples, the VAR run whose sampling settings are swept, or the tokenizer alone
    var = vae = None
    if args.tokenizer_only:
        vae = ceiling_tokenizer(args)
        size, matched = vae.config.image_size, args.tokenizer_only
    elif args.sweep:
        var, vae = sweep_models(args)
        size = vae.config.image_size
        fake_labels = torch.arange(var.num_classes).repeat_interleave(args.sweep_per_class)  # (N,)
        matched = len(fake_labels)
    else:
        fake, fake_labels = load_samples(args.samples)
        size, matched = fake.shape[-1], len(fake)

    # 2. real images: a reference set, and a second held-out set of as many images as the samples (matched N)
    reference, held_out, held_out_labels, train_set, names = real_images(args, size, matched)

    # 3. the judge (always: class accuracy needs a classifier of the real classes) and the feature space
    judge = get_judge(args, train_set)
    extractor, feature_space = feature_extractor(args, judge)
    _, reference_features = extract_features(extractor, reference, batch_size=50)  # (M, D)
    # every image set is measured the same way: judge accuracy and distances to the reference features
    measure = functools.partial(score, judge, extractor, reference_features, names=names)

    # 4. the floor (real vs real) and the ceiling (tokenizer reconstructions vs real), at the samples' N
    report = {"samples": matched, "real_reference": len(reference), "real_matched": len(held_out),
              "feature_space": feature_space}
    report.update(floor_and_ceiling(args, vae, measure, held_out, held_out_labels, size))

    # 5. the samples: one set from --samples, or one per setting of the sweep (none with --tokenizer-only)
    if args.tokenizer_only:
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.tokenizer)), "ceiling.json")
    elif args.sweep:
        report["sweep"] = sweep(args, var, vae, fake_labels, measure)
        report.update(choose(report["sweep"], args.sweep_min_accuracy))
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "sampling.json")
    else:
        add_sample_scores(report, measure(fake, fake_labels))
        report["worst_classes"] = diagnose_classes(report)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples)), "evaluation.json")

    # 6. the report
    write_report(report, out)


if __name__ == "__main__":
    sys.exit(main())
