"""The demo's report: PNG figures (matplotlib, Agg) and one self-contained HTML page that links them.

Every colour means one thing in every figure (:data:`COLORS`): yellow the teacher's proposal, green the
ground truth (a correction is the truth here), blue the students' mask, red foreground a mask missed,
magenta foreground a mask has wrongly; uncertainty is drawn with magma on the fixed 0-1 bit scale of
:mod:`napari_diffseg.base.uncertainty`. Image panels are at least as large as the images (a 256-px
image gets about 280 px).

No Qt; matplotlib is imported with the Agg backend inside the figure functions.
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

FIGURES = ("dice_per_round.png", "loss_curves.png", "test_predictions.png", "uncertainty_errors.png")
"""Figures every report has (plus ``overlays_round<N>.png`` per round)."""

COLORS = {
    "proposal": (1.0, 0.84, 0.0),  # yellow: the teacher's proposal
    "truth": (0.1, 0.62, 0.23),  # green: the ground truth (= the correction)
    "students": (0.18, 0.44, 0.86),  # blue: the students' mask
    "missed": (0.89, 0.1, 0.11),  # red: foreground the mask missed
    "extra": (0.85, 0.15, 0.72),  # magenta: foreground the mask has wrongly
}
"""One meaning per colour, in every figure."""
PANEL_INCHES = 3.3  # at PANEL_DPI: about 260 px per image panel once margins are taken
_GROUP_SHADES = {  # loss curves: purples for the students, browns for the teacher (no colour of COLORS)
    "students": ("#542788", "#8073ac", "#2d004b", "#b2abd2"),
    "teacher": ("#7f3b08", "#b35806", "#e08214", "#543005"),
}
PANEL_DPI = 96

_LOSS_JOBS = (
    ("cotrain_round1", "round 1"),
    ("cotrain_round2", "round 2"),
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int, palette: bool = True) -> None:
    """Save a figure as a PNG: 256 colours (a fraction of the size) for line and bar charts; true colour
    (``palette=False``) for figures with images and colour maps, where a palette would map the colour
    bar's gradient onto the overlays' red and magenta and change what the colours say."""
    import io

    from PIL import Image

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as img:
        rgb = img.convert("RGB")
        out = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT) if palette else rgb
        out.save(path, optimize=True)


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


def _errors(ax: Any, mask: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """Overlay where ``mask`` misses the truth (red) and where it has foreground wrongly (magenta)."""
    missed, extra = truth & ~mask, mask & ~truth
    rgba = np.zeros((*mask.shape, 4), np.float32)
    rgba[missed] = (*COLORS["missed"], 0.9)
    rgba[extra] = (*COLORS["extra"], 0.9)
    ax.imshow(rgba)
    return int(missed.sum()), int(extra.sum())


def overlay_strip(
    path: Path, rows: Sequence[Mapping[str, Any]], title: str, corrected: bool = True, threshold: float = 0.5
) -> None:
    """Rows of image / teacher's proposal / uncertainty / truth with the proposal's errors.

    ``corrected``: the annotator corrected these proposals (round 1: the last column is their correction,
    red the pixels they added, magenta those they removed); otherwise (round 2: the same images, already
    training labels) the last column is the truth and the proposal's remaining errors.
    """
    plt = _plt()
    n = len(rows)
    fig = plt.figure(figsize=(4 * PANEL_INCHES + 1.0, (PANEL_INCHES + 0.45) * n + 0.7))
    grid = fig.add_gridspec(n, 5, width_ratios=[1, 1, 1, 1, 0.06], wspace=0.06, hspace=0.3)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(4)] for r in range(n)]).reshape(n, 4)
    image_of_unc = None
    for r, row in enumerate(rows):
        image, prop, unc, truth = row["image"], row["proposal"] > 0, row["uncertainty"], row["correction"] > 0
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(str(row["name"]), fontsize=9)
        _overlay(axes[r, 1], image, prop, COLORS["proposal"])
        image_of_unc = axes[r, 2].imshow(unc, cmap="magma", vmin=0.0, vmax=1.0)
        _overlay(axes[r, 3], image, truth, COLORS["truth"])
        missed, extra = _errors(axes[r, 3], prop, truth)
        flagged = float(np.mean(unc >= threshold))
        wrong = prop != truth
        caught = float((wrong & (unc >= threshold)).sum()) / max(1, int(wrong.sum()))
        axes[r, 1].set_xlabel(
            f"Dice against the truth {row.get('proposal_dice', float('nan')):.3f}", fontsize=8
        )
        axes[r, 2].set_xlabel(
            f"≥ {threshold:g} bit: {100 * flagged:.0f} % of the pixels,\nholding {100 * caught:.0f} % of the "
            "proposal's errors",
            fontsize=8,
        )
        what = "added" if corrected else "missed"
        wrongly = "removed" if corrected else "wrong"
        axes[r, 3].set_xlabel(f"{missed} px {what} (red),\n{extra} px {wrongly} (magenta)", fontsize=8)
        for ax in axes[r]:
            _off(ax)
    last = "the correction (= truth)" if corrected else "truth; the proposal's errors"
    for c, name in enumerate(("image", "teacher's proposal", "uncertainty (bits)", last)):
        axes[0, c].set_title(name, fontsize=10)
    if image_of_unc is not None:
        cax = fig.add_subplot(grid[:, 4])
        bar = fig.colorbar(image_of_unc, cax=cax)
        bar.set_label("uncertainty, bits (0 = sure, 1 = samples split 50/50)", fontsize=8)
        bar.ax.axhline(threshold, color="white", lw=1.5)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    _save(fig, path, dpi=PANEL_DPI, palette=False)


def error_figure(path: Path, detection: Mapping[str, Mapping[str, Any]], threshold: float = 0.5) -> None:
    """The error-detection curve of each round (share of the proposal's wrong pixels found against the
    share of pixels inspected, most uncertain first), with chance (the diagonal) and the display
    threshold marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="inspecting in random order")
    styles = ("-", "-.", ":")
    for i, (label, d) in enumerate(detection.items()):
        curve = d.get("curve") or {}
        xs, ys = curve.get("inspected", []), curve.get("found", [])
        if not xs:
            continue
        at = d.get("at_threshold", {}).get(f"{threshold:g}")
        text = f"{label}: AUROC {d.get('auroc', float('nan')):.2f}"
        if at:
            text += f"; ≥ {threshold:g} bit: {100 * at[0]:.0f} % of pixels, {100 * at[1]:.0f} % of errors"
        ax.plot(xs, ys, lw=1.8, ls=styles[i % len(styles)], color="black", label=text)
        if at:
            ax.plot([at[0]], [at[1]], "o", color="black", ms=6, mfc="white" if i else "black")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("share of pixels inspected, most uncertain first")
    ax.set_ylabel("share of the proposal's wrong pixels found")
    ax.set_title("Does the uncertainty point at the errors? (validation images)", fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    _save(fig, path, dpi=PANEL_DPI)


def dice_figure(
    path: Path, rounds: Sequence[Mapping[str, Any]], baselines: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Students' test Dice per round (and of the supervised references): the mean (bar, ± std) and
    each test image (dots)."""
    plt = _plt()
    grey: Any = "#999999"
    bars: list[tuple[str, Mapping[str, Any], Any]] = [
        (f"round {r['round']}\n{r['labeled']} GT + {r['corrected']} corr.", r, COLORS["students"])
        for r in rounds
    ] + [(str(b["name"]).replace(", ", "\n", 1), b, grey) for b in baselines]
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
    """One panel per job: the students' and the teacher's losses under plain names (the same names as
    the Train widget's plot), each stage's total dashed; weights, fractions and validation scores are
    not losses and are left out."""
    from napari_diffseg.review import NOT_LOSSES, VALIDATION_PREFIX, loss_name

    plt = _plt()
    panels = []
    for key, label in _LOSS_JOBS:
        curves: dict[str, tuple[list[int], list[float]]] = {}
        offset = 0
        for phase, series in loss_series(events.get(key, [])).items():
            longest = 0
            for name, (steps, values) in series.items():
                if name in NOT_LOSSES or name.startswith(VALIDATION_PREFIX):
                    continue
                group, plain = loss_name(phase, name)
                title = f"{group}: {plain}" if group != "total" else f"total ({plain})"
                xs, ys = curves.setdefault(title, ([], []))
                xs.extend(offset + s for s in steps)
                ys.extend(values)
                longest = max(longest, max(steps, default=0))
            offset += longest
        if curves:
            panels.append((label, curves))
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 4.6), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):
        used: dict[str, int] = {}
        for name, (xs, ys) in sorted(curves.items()):
            group = name.split(":", 1)[0]
            if group in _GROUP_SHADES:
                shades = _GROUP_SHADES[group]
                color, style = shades[used.get(group, 0) % len(shades)], "-"
                used[group] = used.get(group, 0) + 1
            else:  # a stage's total
                color, style = "black", "--"
            ax.plot(xs, ys, ls=style, lw=1.3, color=color, label=name, marker="." if len(xs) < 10 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step (all stages of the job)", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no loss events", ha="center")
    fig.tight_layout()
    _save(fig, path, dpi=PANEL_DPI)


def test_figure(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Test images: the truth (green) and the students' masks after each round (blue), with what each
    mask missed (red) and has wrongly (magenta)."""
    plt = _plt()
    labels = list(rows[0]["predictions"]) if rows else []
    n, cols = len(rows), 2 + len(labels)
    fig, axes = plt.subplots(
        max(1, n), cols, figsize=(PANEL_INCHES * cols, PANEL_INCHES * max(1, n) + 0.5), squeeze=False
    )
    for r, row in enumerate(rows):
        truth = row["truth"] > 0
        axes[r, 0].imshow(row["image"])
        axes[r, 0].set_ylabel(str(row["name"]), fontsize=9)
        _overlay(axes[r, 1], row["image"], truth, COLORS["truth"])
        for c, label in enumerate(labels, start=2):
            pred = row["predictions"][label] > 0
            _overlay(axes[r, c], row["image"], pred, COLORS["students"])
            _errors(axes[r, c], pred, truth)
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
    _save(fig, path, dpi=PANEL_DPI, palette=False)


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
body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #888;vertical-align:middle;margin:0 .2em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.3em 0}.note{color:#555;font-size:.9em}
"""


_LEGEND = {
    "proposal": "the teacher's proposal",
    "truth": "the ground truth (a correction is the truth here)",
    "students": "the students' mask",
    "missed": "foreground the mask missed",
    "extra": "foreground the mask has wrongly",
}


def _legend_html(keys: Sequence[str] = tuple(_LEGEND)) -> str:
    def swatch(key: str) -> str:
        r, g, b = (round(255 * v) for v in COLORS[key])
        return f"<span class='swatch' style='background:rgb({r},{g},{b})'></span>{html.escape(_LEGEND[key])}"

    return "Colours, the same in every figure: " + "; ".join(swatch(k) for k in keys) + "."


def _overlay_note(index: int) -> str:
    if index == 0:
        return (
            "After round 1: the proposals the simulated annotator corrected (its correction is the ground "
            "truth). Red: pixels the annotator added; magenta: pixels it removed."
        )
    return (
        "After round 2: the teacher on the same images. They were training labels of round 2, so this is "
        "no score: it shows how the maps changed. Red / magenta: what the proposal still misses / has "
        "wrongly; nobody corrected anything here."
    )


def _uncertainty_html(detection: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The section that measures what the uncertainty is worth (base/uncertainty.error_detection)."""
    if not detection:
        return []
    rows = []
    for label, d in detection.items():
        at = d.get("at_threshold", {}).get("0.5") or [float("nan"), float("nan")]
        rows.append(
            [
                label,
                d.get("images", ""),
                d.get("auroc"),
                d.get("area"),
                1 - d.get("error_rate", float("nan")) / 2,
                f"{100 * d.get('error_rate', float('nan')):.1f} %",
                f"{100 * at[0]:.1f} %",
                f"{100 * at[1]:.1f} %",
            ]
        )
    return [
        "<h2>Does the uncertainty point at the errors?</h2>",
        "<p>On the validation images (ground truth known, never corrected), each pixel's uncertainty is "
        "scored as a detector of the teacher's wrong pixels. <b>AUROC</b>: the chance that a wrong pixel is "
        "more uncertain than a right one (0.5 = no better than chance, 1 = perfect). <b>Error-detection "
        "curve</b>: inspect the pixels most uncertain first; the share of wrong pixels found against the "
        "share inspected (area 0.5 = random order; the best possible area is 1 − error rate / 2). The last "
        "two columns are what the Annotate widget colours at its default threshold (0.5 bit).</p>",
        _table(
            [
                "after",
                "images",
                "AUROC",
                "area under the curve",
                "best possible area",
                "pixels wrong",
                "pixels coloured (≥ 0.5 bit)",
                "wrong pixels among them",
            ],
            rows,
        ),
        "<img src='uncertainty_errors.png' alt='error-detection curves'>",
    ]


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
        f"The run starts with <b>{s['k']} labeled</b> train images, trains the diffusion teacher on them and "
        "co-trains the twin students (round 1), lets the teacher propose masks with uncertainty, "
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
        f"<p class='note'>{_legend_html()} Uncertainty: magma on a fixed scale, 0 to 1 bit (0: the "
        "teacher's samples agree; 1: they split 50/50), the same for every image; the white line on the "
        "colour bar is the threshold from which the Annotate widget colours it (0.5 bit).</p>",
        *(
            f"<h3>{html.escape(label)}</h3><p class='note'>{html.escape(_overlay_note(i))}</p>"
            f"<img src='{html.escape(f)}' alt='{html.escape(label)}'>"
            for i, (label, f) in enumerate(overlay_files)
        ),
        *_uncertainty_html(numbers.get("uncertainty", {})),
        "<h2>Held-out test images</h2>",
        f"<p class='note'>{_legend_html(('truth', 'students', 'missed', 'extra'))}</p>",
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
        title = (
            f"After {label}: the proposals the annotator corrected"
            if i == 1
            else f"After {label}: the teacher on the same images (training labels of this round)"
        )
        overlay_strip(folder / name, rows, title, corrected=i == 1)
        overlay_files.append((label, name))
    error_figure(folder / "uncertainty_errors.png", numbers.get("uncertainty", {}))
    dice_figure(folder / "dice_per_round.png", numbers["rounds"], numbers.get("baselines", ()))
    loss_figure(folder / "loss_curves.png", events)
    test_figure(folder / "test_predictions.png", test_rows)
    return overlay_files


def write_html(folder: Path, numbers: Mapping[str, Any], overlay_files: Sequence[tuple[str, str]]) -> Path:
    """Write ``report.html`` (linking the figures beside it); returns its path."""
    page = folder / "report.html"
    page.write_text(render_html(numbers, overlay_files), encoding="utf-8")
    return page
