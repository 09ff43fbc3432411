"""The demo's report: PNG figures (matplotlib, Agg) and one self-contained HTML page that links them.

No Qt; matplotlib is imported with the Agg backend inside :func:`write_report`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_diffseg.base.contracts import JobEventOut

__all__ = ["FIGURES", "render_html", "write_figures", "write_html"]

FIGURES = ("dice_per_round.png", "loss_curves.png", "test_predictions.png")
"""Figures every report has (plus ``overlays_round<N>.png`` per round)."""

_LOSS_JOBS = (
    ("pretrain", "teacher pretraining"),
    ("cotrain_round1", "round 1"),
    ("cotrain_round2", "round 2"),
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> None:
    """Save a figure as a 256-colour PNG (a fraction of the size of a true-colour one)."""
    import io

    from PIL import Image

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def _overlay(ax: Any, image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float]) -> None:
    ax.imshow(image)
    rgba = np.zeros((*mask.shape, 4), np.float32)
    rgba[mask > 0] = (*color, 0.45)
    ax.imshow(rgba)
    if mask.any() and not mask.all():
        ax.contour(mask > 0, levels=[0.5], colors=[color], linewidths=0.8)


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_strip(path: Path, rows: Sequence[Mapping[str, Any]], title: str) -> None:
    """Rows of image / proposal / uncertainty / correction (added pixels red, removed blue)."""
    plt = _plt()
    n = len(rows)
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        image, prop, unc, corr = row["image"], row["proposal"] > 0, row["uncertainty"], row["correction"] > 0
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(str(row["name"]), fontsize=9)
        _overlay(axes[r, 1], image, prop, (1.0, 0.85, 0.0))
        im = axes[r, 2].imshow(unc, cmap="magma", vmin=0.0, vmax=max(float(np.max(unc)), 1e-6))
        fig.colorbar(im, ax=axes[r, 2], fraction=0.046, pad=0.02)
        _overlay(axes[r, 3], image, corr, (0.1, 0.8, 0.2))
        changed = np.zeros((*corr.shape, 4), np.float32)
        changed[corr & ~prop] = (1.0, 0.0, 0.0, 0.9)  # the annotator added these
        changed[prop & ~corr] = (0.1, 0.3, 1.0, 0.9)  # ... and removed these
        axes[r, 3].imshow(changed)
        axes[r, 1].set_xlabel(f"Dice vs truth {row.get('proposal_dice', float('nan')):.3f}", fontsize=8)
        axes[r, 3].set_xlabel(f"{int((corr != prop).sum())} pixels changed", fontsize=8)
        for ax in axes[r]:
            _off(ax)
    for c, name in enumerate(("image", "teacher proposal", "uncertainty", "correction (= truth)")):
        axes[0, c].set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path, dpi=80)


def dice_figure(
    path: Path, rounds: Sequence[Mapping[str, Any]], baselines: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Students' test Dice per round (and of the supervised references): the mean (bar, ± std) and
    each test image (dots)."""
    plt = _plt()
    bars = [
        (f"round {r['round']}\n{r['labeled']} GT + {r['corrected']} corr.", r, "#4c72b0") for r in rounds
    ] + [(str(b["name"]).replace(", ", "\n", 1), b, "#999999") for b in baselines]
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 1.5, 3.8))
    for x, (_label, r, color) in enumerate(bars):
        ax.bar(x, r["test_dice_mean"], yerr=r["test_dice_std"], color=color, alpha=0.85, capsize=4)
        vals = list(r["test_dice_per_image"].values())
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else [0.0]
        ax.scatter(x + np.asarray(jitter), vals, color="k", s=10, zorder=3)
        ax.text(x, 1.02, f"{r['test_dice_mean']:.3f}", ha="center", fontsize=9)  # above the dots
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("students' test Dice")
    ax.set_title("Test Dice per co-training round (grey: supervised references)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=90)


def loss_series(events: Sequence[JobEventOut]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{phase: {loss name: (steps, values)}}`` from a job's persisted progress events."""
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for event in events:
        data = event.data
        losses = data.losses
        if data.kind != "progress" or not losses:
            continue
        phase = out.setdefault(data.phase, {})
        for name, value in losses.items():
            if value is None or not math.isfinite(float(value)):
                continue
            steps, values = phase.setdefault(name, ([], []))
            steps.append(data.step)
            values.append(float(value))
    return out


def loss_figure(path: Path, events: Mapping[str, Sequence[JobEventOut]]) -> None:
    """One panel per (job, phase) with every loss the loop reported."""
    plt = _plt()
    panels = []
    for key, label in _LOSS_JOBS:
        for phase, series in loss_series(events.get(key, [])).items():
            panels.append((f"{label} · {phase}", series))
    n = max(1, len(panels))
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        for name, (steps, values) in series.items():
            if name in ("agree", "ramp"):  # not losses: a fraction and the ramp-up weight
                continue
            ax.plot(steps, values, label=name, lw=1.2, marker="." if len(steps) < 10 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no loss events", ha="center")
    fig.tight_layout()
    _save(fig, path, dpi=80)


def test_figure(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Test images: the truth and the students' masks after each round."""
    plt = _plt()
    labels = list(rows[0]["predictions"]) if rows else []
    n, cols = len(rows), 2 + len(labels)
    fig, axes = plt.subplots(max(1, n), cols, figsize=(2.6 * cols, 2.6 * max(1, n) + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        axes[r, 0].imshow(row["image"])
        axes[r, 0].set_ylabel(str(row["name"]), fontsize=9)
        _overlay(axes[r, 1], row["image"], row["truth"] > 0, (0.1, 0.8, 0.2))
        for c, label in enumerate(labels, start=2):
            _overlay(axes[r, c], row["image"], row["predictions"][label] > 0, (0.2, 0.5, 1.0))
            dice = (
                row["dice"].get(int(label.split()[-1]), float("nan")) if label.split()[-1].isdigit() else None
            )
            if dice is not None:
                axes[r, c].set_xlabel(f"Dice {dice:.3f}", fontsize=8)
        for ax in axes[r]:
            _off(ax)
    for c, name in enumerate(("test image", "ground truth", *(f"students, {lb}" for lb in labels))):
        axes[0, c].set_title(name, fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi=80)


# ------------------------------------------------------------------------------------------ HTML


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "—" if not math.isfinite(v) else f"{v:.3f}"
        return html.escape("—" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}.note{color:#555;font-size:.9em}
"""


def render_html(numbers: Mapping[str, Any], overlay_files: Sequence[tuple[str, str]]) -> str:
    """The report page; figures are linked by relative path (they sit beside it)."""
    s = numbers["settings"]
    rounds = numbers["rounds"]
    seconds = numbers.get("seconds", {})
    m = numbers["machine"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>diffseg demo report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>diffseg demo</h1>",
        "<p>Synthetic H&amp;E-like glands (textured, blurred, noisy, uneven illumination, touching glands) "
        f"with exact ground truth: {numbers['data']['train']} train, {numbers['data']['val']} val and "
        f"{numbers['data']['test']} held-out test images of {s['size']}×{s['size']} px. "
        f"The run starts with <b>{s['k']} labeled</b> train images, pretrains the diffusion teacher without "
        "labels, co-trains the twin students (round 1), lets the teacher propose masks with uncertainty, "
        f"has a simulated annotator correct the <b>{len(numbers['corrections'])} most uncertain</b> proposals "
        "(the correction is the ground truth) and co-trains again (round 2). Everything went through the "
        "real backend (<code>diffseg serve</code>) and its HTTP client.</p>",
        f"<p class='note'>Preset <code>{html.escape(s['name'])}</code> (backend preset "
        f"<code>{html.escape(s['job_preset'])}</code>, overrides <code>{html.escape(str(s['overrides']))}"
        f"</code>), seed {s['seed']}. Machine: {html.escape(str(m['processor']))}, {m['cpu_count']} CPUs, "
        f"torch {html.escape(str(m['torch']))}. Total wall time {seconds.get('total', float('nan')):.0f} s.</p>",
        "<h2>Students' test Dice per round</h2>",
        _table(
            ["round", "labeled (GT)", "corrected", "test Dice (mean ± std)", "test IoU", "val Dice", "model"],
            [
                [
                    r["round"],
                    r["labeled"],
                    r["corrected"],
                    f"{r['test_dice_mean']:.3f} ± {r['test_dice_std']:.3f}",
                    r["test_iou_mean"],
                    r.get("model_metrics", {}).get("val_dice"),
                    r["model_id"],
                ]
                for r in rounds
            ],
        ),
        *(
            [
                "<p>References outside the loop: the same students trained on the labeled images alone "
                "(no teacher, no unlabeled images), as many steps as one co-training round.</p>",
                _table(
                    ["reference", "labeled", "test Dice (mean ± std)", "test IoU"],
                    [
                        [
                            b["name"],
                            b["labeled"],
                            f"{b['test_dice_mean']:.3f} ± {b['test_dice_std']:.3f}",
                            b["test_iou_mean"],
                        ]
                        for b in numbers.get("baselines", [])
                    ],
                ),
            ]
            if numbers.get("baselines")
            else []
        ),
        "<img src='dice_per_round.png' alt='test Dice per round'>",
        "<h2>The simulated annotator</h2>",
        "<p>It opened the images the backend's <code>/next</code> named (highest mean uncertainty first) and "
        "saved the ground truth as a correction of the proposal it started from; the project recorded "
        "the edit Dice (proposal vs correction) and the pixels changed. Drawing from scratch would mean "
        "painting every foreground pixel.</p>",
        _table(
            [
                "image",
                "uncertainty",
                "edit Dice",
                "pixels changed",
                "% of image",
                "foreground pixels (truth)",
            ],
            [
                [
                    c["name"],
                    c["uncertainty"],
                    c["edit_dice"],
                    c["pixels_changed"],
                    None
                    if c["pixels_changed_fraction"] is None
                    else f"{100 * c['pixels_changed_fraction']:.1f} %",
                    c["foreground_pixels"],
                ]
                for c in numbers["corrections"]
            ],
        ),
        f"<p>Mean edit Dice {numbers['mean_edit_dice']:.3f}; mean pixels changed "
        f"{numbers['mean_pixels_changed']:.0f} ({100 * numbers['mean_pixels_changed_fraction']:.1f} % of an "
        "image).</p>",
        "<h2>Proposals, uncertainty and corrections</h2>",
        "<p class='note'>Yellow: the teacher's proposal. Green: the correction (= ground truth); red pixels "
        "were added by the annotator, blue ones removed. The round-2 strip shows the teacher after round 2 "
        "on the same images.</p>",
        *(
            f"<h3>{html.escape(label)}</h3><img src='{html.escape(f)}' alt='{html.escape(label)}'>"
            for label, f in overlay_files
        ),
        "<h2>Held-out test images</h2>",
        "<img src='test_predictions.png' alt='students on test images'>",
        "<h2>Loss curves (from the jobs' persisted events)</h2>",
        "<img src='loss_curves.png' alt='loss curves'>",
        "<h2>Seconds per step</h2>",
        _table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in seconds.items()]),
        "<p class='note'>All numbers are in <a href='report.json'>report.json</a>. The project is in "
        f"<code>{html.escape(str(numbers['project']))}</code>: open it with "
        "<code>diffseg serve</code> and the napari plugin to continue the loop.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_figures(
    folder: Path,
    numbers: Mapping[str, Any],
    events: Mapping[str, Sequence[JobEventOut]],
    overlays: Mapping[str, Sequence[Mapping[str, Any]]],
    test_rows: Sequence[Mapping[str, Any]],
) -> list[tuple[str, str]]:
    """Write every PNG into ``folder``; returns ``(label, file name)`` of the overlay strips."""
    folder.mkdir(parents=True, exist_ok=True)
    overlay_files = []
    for i, (label, rows) in enumerate(overlays.items(), start=1):
        name = f"overlays_round{i}.png"
        overlay_strip(folder / name, rows, f"{label}: proposals of the teacher")
        overlay_files.append((label, name))
    dice_figure(folder / "dice_per_round.png", numbers["rounds"], numbers.get("baselines", ()))
    loss_figure(folder / "loss_curves.png", events)
    test_figure(folder / "test_predictions.png", test_rows)
    return overlay_files


def write_html(folder: Path, numbers: Mapping[str, Any], overlay_files: Sequence[tuple[str, str]]) -> Path:
    """Write ``report.html`` (linking the figures beside it); returns its path."""
    page = folder / "report.html"
    page.write_text(render_html(numbers, overlay_files), encoding="utf-8")
    return page
