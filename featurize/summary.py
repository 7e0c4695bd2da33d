"""Human summaries of what featurize did."""

from __future__ import annotations

from featurize.run import FeaturizeResult


def featurize_summary(res: FeaturizeResult, max_listed: int = 20, with_subjects: bool = True) -> str:
    """A few lines: counts, rate, cache path, skipped files with reasons, data problems, leakage."""
    s = res.settings
    lines = [
        f"{res.dataset.dataset_id}: {res.n_images} images x {s['backbone']} ({s['weights']}, {s['image_size']}, {s['pooling']}, {s['resize']}, layers {s['layers']})",
        f"processed {res.n_computed}, reused {res.n_reused} from cache"
        + (f", {res.images_per_s:.1f} images/s on {s.get('engine', 'tf')}" if res.n_computed else " (no inference needed)")
        + f", {res.seconds:.1f} s in all",
        f"cache: {res.cache}",
    ]
    if "build" in res.phases:  # the model was built with TF: say where the first run's time went
        from featurize.timing import describe

        lines.append(f"time (model built with TensorFlow this run): {describe(res.phases)}")
    if res.failed:
        lines.append(f"skipped {len(res.failed)} unreadable file(s):")
        lines += [f"  {p}: {r}" for p, r in res.failed[:max_listed]]
        if len(res.failed) > max_listed:
            lines.append(f"  ... and {len(res.failed) - max_listed} more (all recorded in the cache)")
    for p in res.problems[:max_listed]:
        lines.append(f"warning: {p}")
    if with_subjects:
        lines += _subject_lines(res)
    return "\n".join(lines)


def _subject_lines(res: FeaturizeResult) -> list[str]:
    table = res.dataset.table
    if not (table["subject"] != "").all():
        return []
    from featurize.subjects import format_report, subject_report

    rep = subject_report(table["label"].tolist(), table["subject"].tolist(), table["split"].tolist())
    return format_report(rep).splitlines()
