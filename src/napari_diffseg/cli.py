"""The ``diffseg`` command: one entry point, one subcommand per job (DESIGN.md §2.3).

User errors (bad files, bad options) exit with status 2 and one line on stderr saying what to do;
they never print a traceback. Heavy imports (torch, MONAI) happen inside the subcommands so that
``diffseg --help`` is instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="diffseg",
    help="Few-label biomedical segmentation: diffusion teacher, twin students, human in the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class _Bars:
    """Terminal progress: one tqdm bar per phase, fed by core events."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.phase = ""

    def __call__(self, ev: Any) -> None:
        if not self.enabled or ev.kind not in ("progress", "done"):
            return
        from tqdm.auto import tqdm

        if ev.phase != self.phase or self.bar is None:
            self.close()
            self.phase = ev.phase
            self.bar = tqdm(total=ev.total, desc=ev.phase, unit="step", leave=False, file=sys.stderr)
        self.bar.n = ev.step
        if ev.losses:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(ev.losses.items())[:3]}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


@app.command()
def experiment(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (images/, masks/, split.csv)")],
    labeled_fraction: Annotated[
        float, typer.Option("--labeled-fraction", "-f", help="fraction of train images labeled")
    ],
    method: Annotated[str, typer.Option(help="diffseg | supervised | mean-teacher | cps")] = "diffseg",
    preset: Annotated[str, typer.Option(help="tiny | cpu | gpu")] = "cpu",
    seed: Annotated[
        int, typer.Option(help="seed for the subset, initialisation, augmentation, sampling")
    ] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the result JSON here")] = None,
    model_out: Annotated[
        Path | None, typer.Option("--model-out", help="also save the trained model here")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train METHOD on a seeded labeled subset of the train split and evaluate on the test split."""
    _threads(threads)
    from .experiment import run_experiment, write_json

    if not dataset.is_dir():
        raise _user_error(f"dataset folder {dataset} does not exist")
    bars = _Bars(enabled=not quiet)
    try:
        result = run_experiment(
            dataset,
            labeled_fraction=labeled_fraction,
            method=method,
            preset=preset,
            seed=seed,
            device=device,
            model_out=model_out,
            report=bars,
        )
    finally:
        bars.close()
    if "test" not in result:  # a non-zero rank under torchrun
        return
    if json_out is not None:
        write_json(json_out, result)
    t = result["test"]
    typer.echo(
        f"{method} f={labeled_fraction} seed={seed} preset={preset}: test Dice {t['dice_mean']:.4f} ± "
        f"{t['dice_std']:.4f}, IoU {t['iou_mean']:.4f}, HD95 {t['hd95_mean']:.1f} px "
        f"({result['n_labeled']} labeled, {result['seconds']:.0f} s on {result['device']})"
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="model folder (weights.safetensors + config.json)")],
    images: Annotated[list[Path], typer.Argument(help="image files to segment")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the masks")],
    probabilities: Annotated[bool, typer.Option(help="also write foreground probability TIFFs")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Segment images with a model's students (one pass, tiled for large images)."""
    _threads(threads)
    from .predict import predict_files

    written = predict_files(model, images, out, device=device, probabilities=probabilities)
    typer.echo(f"wrote {len(written)} mask(s) to {out}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="model folder")],
    dataset: Annotated[Path, typer.Argument(help="dataset folder with masks")],
    split: Annotated[str, typer.Option(help="split prefix to evaluate: test, val, train, or 'all'")] = "test",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the metrics JSON here ('-' = stdout)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Dice / IoU / HD95 of a model on a dataset folder, per image and the mean."""
    _threads(threads)
    from .experiment import write_json
    from .predict import evaluate_folder

    result = evaluate_folder(model, dataset, split=split, device=device)
    if json_out is not None and str(json_out) == "-":
        typer.echo(json.dumps(result, indent=2))
        return
    if json_out is not None:
        write_json(json_out, result)
    typer.echo(
        f"{result['n']} images ({split}): Dice {result['dice_mean']:.4f} ± {result['dice_std']:.4f}, "
        f"IoU {result['iou_mean']:.4f}, HD95 {result['hd95_mean']:.1f} px"
    )


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Argument(help="new folder for the dataset (must not exist or be empty)")],
    kind: Annotated[str, typer.Option(help="glands (H&E-like) | nuclei")] = "glands",
    n_train: Annotated[int, typer.Option(help="training images")] = 24,
    n_test: Annotated[int, typer.Option(help="test images")] = 8,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write a synthetic dataset folder with ground truth (no network needed)."""
    from .data.synthetic import make_sample_dataset

    path = make_sample_dataset(out, n_train=n_train, n_test=n_test, size=(size, size), kind=kind, seed=seed)
    typer.echo(f"wrote {n_train} train + {n_test} test {kind} images with masks to {path}")


def _user_error(msg: str) -> Exception:
    from .core.errors import DiffsegError

    return DiffsegError(msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one-line messages and exit code 2."""
    from .core.errors import DiffsegError

    try:
        app(args=argv, standalone_mode=False)
    except DiffsegError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        return 130
    except typer.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:
        # usage errors (missing argument, bad option value) from typer's bundled click
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
