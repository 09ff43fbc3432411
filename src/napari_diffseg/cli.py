"""The ``diffseg`` command: one entry point, one subcommand per job (docs/architecture.md §2.3).

User errors (bad files, bad options) exit with status 2 and one line on stderr saying what to do;
they never print a traceback. Heavy imports (torch, MONAI) happen inside the subcommands, after their
arguments and paths are checked, so that ``diffseg --help`` is instant and a wrong path fails in a
second, not after torch has loaded. Help and usage lines name arguments and option values in capitals
(``diffseg init PROJECT [--images IMAGES]``).

Why one module of ~1,300 lines: one typer app with one short function per subcommand (argument
declarations, a call into the layer that does the work, a one-line summary); splitting it would only
scatter the command table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from .base.contracts import PRESET_NAMES
from .base.progress import EventBars

app = typer.Typer(
    name="diffseg",
    help="Few-label biomedical segmentation: diffusion teacher, twin students, human in the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich's tables print "<bool>" beside every flag
)


def _preset_name(value: str) -> str:
    """Parse ``--preset``: one of :data:`~napari_diffseg.base.contracts.PRESET_NAMES`, else a one-line error."""
    if value not in PRESET_NAMES:
        from .base.errors import ConfigError

        raise ConfigError(f"unknown preset {value!r}; choose one of {', '.join(PRESET_NAMES)}.")
    return value


def _preset_option(help: str) -> Any:
    """A ``--preset`` option whose choices come from the presets themselves."""
    return typer.Option(parser=_preset_name, metavar="|".join(PRESET_NAMES), help=help)


def _threads(n: int | None) -> None:
    """Set torch's CPU threads (imports torch: call it after the arguments are checked)."""
    if n:
        import torch

        torch.set_num_threads(n)


def _must_exist(path: Path, what: str, hint: str = "check the path") -> None:
    """A one-line error before any heavy import when ``path`` does not exist."""
    if not Path(path).exists():
        raise _user_error(f"{what} {path} does not exist: {hint}.")


def _model_source(path: Path) -> tuple[Path, str | None]:
    """The model folder ``path`` names (a project → its active model) and, for a model that never saw a
    label (label-free pretraining), a warning. Reads only the project database and the model's JSON files
    (no torch), so a wrong path or a project without a model fails at once."""
    path = Path(path)
    _must_exist(path, "model folder (or project)", "pass a model folder or a project")
    name = path.name
    if (path / "project.db").is_file():
        from .project import Project

        with Project.open(path) as proj:
            active = proj.active_model()
            if active is None:
                raise _user_error(
                    f"project {path} has no model yet: annotate a few images and run `diffseg cotrain {path}` "
                    f"(or `diffseg pretrain {path}` for a label-free first model) first"
                )
            name = active.id
            path = proj.model_dir(active.id)
    if path.is_dir() and not (path / "config.json").is_file():
        raise _user_error(f"{path} is not a model folder (no config.json) and not a project")
    warning = None
    try:
        config = json.loads((path / "config.json").read_text())
        metrics_file = path / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    except (OSError, ValueError):
        return path, None  # the loader says what is wrong with it
    inner = config.get("config", {}) if isinstance(config.get("config"), dict) else {}
    label_free = metrics.get("stage") == "pretrain" or inner.get("round") == 0
    if label_free:
        warning = (
            f"warning: model {name} comes from label-free pretraining (round 0) and has never seen a "
            "label: its masks split the image into two kinds of texture, not necessarily into your "
            "objects. Correct a few proposals and run `diffseg cotrain` for a model that learned your "
            "classes."
        )
    return path, warning


@app.command()
def experiment(
    dataset: Annotated[Path, typer.Argument(help="dataset folder (images/, masks/, split.csv)")],
    labeled_fraction: Annotated[
        float, typer.Option("--labeled-fraction", "-f", help="fraction of train images labeled")
    ],
    method: Annotated[str, typer.Option(help="diffseg | supervised | mean-teacher | cps")] = "diffseg",
    preset: Annotated[str, _preset_option("compute budget")] = "cpu",
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
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="share of the train images carved into a validation split when the dataset has no 'val' "
            "images (checkpoint choice, pseudo-label gate); 0 = none",
        ),
    ] = 0.2,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="KEY=VALUE", help="override a preset field (repeatable), e.g. pretrain_steps=0"
        ),
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="binary (masks/) | multiclass (masks/ as class maps, values 0..K-1 for the --classes named; "
            "Dice per class) | instances (instances/<id>.tif: trained on a background / interior / "
            "boundary target, objects by a seeded watershed, AP@0.5...0.9 and F1@0.5 reported)"
        ),
    ] = "binary",
    classes: Annotated[
        str | None,
        typer.Option(
            help="--task multiclass: the class names, background first (background,gland,lumen); a mask "
            "value outside 0..K-1 is refused. --task instances: background and two or more object classes "
            "(background,disc,rod) train objects of several classes: masks/<id> is then each image's class "
            "map (0 background, 1..n) beside instances/<id>.tif, and the test adds ap_50_per_class and "
            "class_accuracy"
        ),
    ] = None,
    watershed: Annotated[
        str,
        typer.Option(
            help="--task instances: tuned (choose the watershed's thresholds, smoothing and minimum seed on "
            "the validation images after training; the model keeps them) | default (the fixed defaults)"
        ),
    ] = "tuned",
    teacher_test: Annotated[
        bool,
        typer.Option(
            "--teacher-test",
            help="diffseg, binary: also score the teacher's own masks on the test images (test_teacher in "
            "the JSON; reporting only, chooses nothing)",
        ),
    ] = False,
) -> None:
    """Train METHOD on a seeded labeled subset of the train split and evaluate on the test split."""
    overrides = _parse_set(set_ or [])
    if not dataset.is_dir():
        raise _user_error(f"dataset folder {dataset} does not exist")
    _threads(threads)
    from .experiment import run_experiment, write_json

    bars = EventBars(enabled=not quiet, leave=False)
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
            val_fraction=val_fraction,
            overrides=overrides,
            task=task,
            classes=classes,
            watershed=watershed,
            teacher_test=teacher_test,
        )
    finally:
        bars.close()
    if "test" not in result:  # a non-zero rank under torchrun
        return
    if json_out is not None:
        write_json(json_out, result)
    t = result["test"]
    objects = _instance_line(t) if task == "instances" else ""
    if task == "instances" and "watershed" in result:
        objects += _watershed_line(result["watershed"], t)
    if task == "multiclass":
        per_class = ", ".join(f"{name} {dice:.4f}" for name, dice in t["dice_per_class"].items())
        objects = f"; Dice per class: {per_class} (mean {t['dice_class_mean']:.4f})"
    typer.echo(
        f"{method} f={labeled_fraction} seed={seed} preset={preset}: test Dice {t['dice_mean']:.4f} ± "
        f"{t['dice_std']:.4f}, IoU {t['iou_mean']:.4f}, HD95 {t['hd95_mean']:.1f} px{objects} "
        f"({result['n_labeled']} labeled, {result['seconds']:.0f} s on {result['device']})"
    )


def _watershed_line(tuning: dict, t: dict) -> str:
    """What the watershed's tuning on the validation images chose, and what it changed on the test."""
    if not tuning["tuned"]:
        return f"; watershed: defaults kept ({tuning['objects']} validation objects, too few to tune on)"
    from .core.instances import Watershed

    line = (
        f"; watershed chosen on {tuning['images']} validation images ({tuning['objects']} objects, AP@0.5 "
        f"{tuning['ap_50_start']:.4f} → {tuning['ap_50']:.4f}): {Watershed(**tuning['params'])}"
    )
    if "ap_50_default_watershed" in t:
        line += f"; test AP@0.5 with the defaults {t['ap_50_default_watershed']:.4f}"
    return line


def _instance_line(t: dict) -> str:
    line = f"; objects: AP@0.5 {t['ap_50']:.4f}, AP@0.75 {t['ap_75']:.4f}, F1@0.5 {t['f1_50']:.4f}"
    if "ap_50_per_class" in t:  # objects of several classes
        per = ", ".join(f"{name} {ap:.4f}" for name, ap in t["ap_50_per_class"].items())
        line += f"; AP@0.5 per class: {per}; class accuracy {t['class_accuracy']:.4f}"
    if "object_f1" in t:
        line += (
            f", GlaS object F1 {t['object_f1']:.4f}, object Dice {t['object_dice']:.4f}, "
            f"object Hausdorff {t['object_hausdorff']:.1f} px"
        )
    return line


@app.command()
def predict(
    model: Annotated[
        Path,
        typer.Argument(
            help="model folder (weights.safetensors + config.json), or a project (its active model)"
        ),
    ],
    images: Annotated[
        list[Path], typer.Argument(help="image files, OME-Zarr images, or folders of them to segment")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder for the masks")],
    probabilities: Annotated[bool, typer.Option(help="also write foreground probabilities")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    into_source: Annotated[
        bool,
        typer.Option(
            "--into-source",
            help="OME-Zarr: write the labels into the input image's labels/ group (default: into a copy in --out)",
        ),
    ] = False,
    labels_name: Annotated[str, typer.Option(help="OME-Zarr: name of the label image")] = "diffseg",
    overwrite: Annotated[
        bool,
        typer.Option(
            help="replace outputs that exist already (label TIFFs, overlays, OME-Zarr copies or labels)"
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    overlays: Annotated[
        bool,
        typer.Option(
            help="also write OUT/FILE.overlay.png: the image with the mask tinted (the masks themselves are "
            "label images of small values, 0 = background, which look black in an image viewer)"
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="print every input's outputs or error as JSON")
    ] = False,
    object_rows: Annotated[
        int,
        typer.Option(
            min=16,
            help="OME-Zarr with an instance model: the rows of context each block of the image is "
            "post-processed with, so objects up to this tall are made whole across blocks",
        ),
    ] = 256,
    watershed: Annotated[
        str | None,
        typer.Option(
            help="an instance model: watershed parameters in place of the model's own, as JSON, e.g. "
            '\'{"seed_threshold": 0.8, "min_size": 30}\' (threshold, seed_threshold, seed_sigma, '
            "min_seed_size, min_size)",
        ),
    ] = None,
) -> None:
    """Segment images with a model's students (one pass, tiled for large images).

    Each image file FILE (e.g. a.png) gives OUT/FILE.tif (a.png.tif), its label image (0 = background,
    k = class k), and OUT/FILE.overlay.png to look at (and FILE.prob.tif with --probabilities): the output
    keeps the input's extension, so a.png and a.tif never share an output. Existing outputs are kept unless
    --overwrite. A file that cannot be read is listed at the end with the reason and the others are still
    predicted; exit status 0 when every input was predicted, 1 when some were not, 2 when none was.
    An OME-Zarr image is read lazily and its labels are written tile by tile as an OME-Zarr label image:
    into a copy OUT/NAME.ome.zarr (default) or, with --into-source, into the image itself;
    --probabilities adds OUT/NAME_probabilities.ome.zarr. An instance model's objects get one id each there
    too (uint32; post-processed block by block with --object-rows of context).
    """
    for item in images:
        _must_exist(item, "image", "pass image files, OME-Zarr images or folders of them")
    _model, warning = _model_source(model)
    if warning:
        typer.echo(warning, err=True)
    _threads(threads)
    from .predict import predict_files

    overrides = None
    if watershed is not None:
        try:
            overrides = json.loads(watershed)
        except ValueError as exc:
            raise _user_error(
                f"--watershed must be a JSON object, e.g. '{{\"seed_threshold\": 0.8}}': {exc}"
            ) from exc
        if not isinstance(overrides, dict):
            raise _user_error(f"--watershed must be a JSON object of parameters, got {watershed!r}")
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None or bar.total != total or done < bar.n:
            from tqdm import tqdm

            if bar is not None:
                bar.close()
            bar = tqdm(total=total, unit="row", desc="predict", leave=False)
        bar.update(done - bar.n)

    try:
        report = predict_files(
            model,
            images,
            out,
            device=device,
            probabilities=probabilities,
            overlays=overlays,
            into_source=into_source,
            labels_name=labels_name,
            overwrite=overwrite,
            progress=progress,
            object_rows=object_rows,
            watershed=overrides,
        )
    finally:
        if bar is not None:
            bar.close()
    done, failed = report.done, report.failed
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "inputs": len(report.outcomes),
                    "done": len(done),
                    "failed": len(failed),
                    "outcomes": [o.to_dict() for o in report.outcomes],
                },
                indent=2,
            )
        )
    if not done:
        reasons = "; ".join(f"{o.source.name}: {o.error}" for o in failed)
        raise _user_error(f"none of the {len(failed)} image(s) could be predicted: {reasons}")
    zarrs = [o.labels for o in done if o.labels is not None and o.labels.parent.name == "labels"]
    files = [o for o in done if o.labels not in zarrs]
    msg = f"predicted {len(done)} of {len(report.outcomes)} image(s)"
    if files:
        meaning = _labels_meaning(model)
        n_overlays = sum(o.overlay is not None for o in files)
        msg += f": wrote {len(files)} mask(s) to {out} as label TIFFs FILE.tif ({meaning}" + (
            "; FILE.overlay.png shows each on its image)" if overlays and n_overlays == len(files) else ")"
        )
        if overlays and n_overlays < len(files):  # z-stacks get no PNG overlay: a PNG has one plane
            msg += (
                f"; overlays for {n_overlays} of them (none for z-stacks: open the stack and its label TIFF "
                "in napari instead)"
            )
    if zarrs:
        msg += f"; OME-Zarr label image(s): {', '.join(str(z) for z in zarrs)}"
        tables = [str(o.objects) for o in done if o.labels in zarrs and o.objects is not None]
        classes = [str(o.classes) for o in done if o.labels in zarrs and o.classes is not None]
        if tables:
            msg += f"; objects (id, class, area, centroid): {', '.join(tables)}"
        if classes:
            msg += f"; each object's class: {', '.join(classes)}"
    if not as_json:
        typer.echo(msg)
    for o in done:
        if o.note:
            typer.echo(f"note: {o.source.name}: {o.note}", err=True)
    if failed:
        typer.echo(f"could not predict {len(failed)} file(s):", err=True)
        for o in failed:
            typer.echo(f"  {o.source}: {o.error}", err=True)
        raise typer.Exit(1)


def _labels_meaning(model: Path) -> str:
    """What a predicted label image holds, from the model's config.json (task and classes)."""
    from .core.checkpoint import CONFIG_FILE
    from .predict import resolve_model

    try:
        header = json.loads((resolve_model(model) / CONFIG_FILE).read_text())
        config = header.get("config", {})
        classes = int(config.get("spec", {}).get("num_classes", 2))
        task = str(config.get("task", "binary" if classes == 2 else "multiclass"))
        names = [str(c["name"]) for c in config.get("classes", [])]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return "0 = background, k = class k"
    if task == "instances" and classes > 3 and len(names) == classes - 1:
        named = ", ".join(f"{k} = {name}" for k, name in enumerate(names) if k)
        return (
            f"one id per object, 0 = background; FILE.classes.tif: each object's class ({named}); "
            "FILE.objects.csv: id, class, class name, area per object"
        )
    if task == "instances":
        return "one id per object, 0 = background"
    if task == "multiclass" and names:
        return ", ".join(f"{k} = {name}" for k, name in enumerate(names))
    if task == "binary":
        return "0 = background, 1 = foreground"
    return "0 = background, k = class k"


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="model folder, or a project (its active model, or --model)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the package to write (.zip)")],
    format_: Annotated[
        str, typer.Option("--format", help="bioimageio: a bioimage.io model package (format 0.5)")
    ] = "bioimageio",
    model_id: Annotated[
        str | None, typer.Option("--model", help="a project's model id (default: the active model)")
    ] = None,
    test_image: Annotated[
        Path | None,
        typer.Option(
            help="image for the package's test input (default: a val, else a train image of the project)"
        ),
    ] = None,
    author: Annotated[
        list[str] | None, typer.Option(help="author name (repeatable; default: the current user)")
    ] = None,
    license_: Annotated[str, typer.Option("--license", help="SPDX licence id of the package")] = "CC-BY-4.0",
    name: Annotated[str | None, typer.Option(help="package name (letters, digits, spaces, _+-())")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace an existing file (only once the new one passed)")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the export report as JSON")] = False,
) -> None:
    """Export a model to a format other tools open: a bioimage.io model package (deepImageJ / Fiji, QuPath,
    ilastik, BiaPy, bioimageio.core). The package is validated and tested before it is written."""
    if format_ != "bioimageio":
        raise _user_error(f"unknown --format {format_!r}; the only format is bioimageio")
    from .export.bioimageio import export_bioimageio

    report = export_bioimageio(
        model,
        out,
        model_id=model_id,
        test_image=test_image,
        authors=author or (),
        license=license_,
        name=name,
        overwrite=overwrite,
    )
    if as_json:
        _print_json(report.to_dict())
        return
    typer.echo(
        f"wrote {report.path} ({report.size_bytes / 2**20:.1f} MiB): model {report.model_id}, weights "
        f"{' + '.join(report.weight_formats)}; bioimageio.core test {report.test_status}, largest difference "
        f"from `diffseg predict` {report.max_abs_difference:.1e}"
    )
    for detail in report.details:
        if "deploy_best" in detail:  # the package's students are not what `diffseg predict` samples
            typer.echo(f"note: {detail}", err=True)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="model folder, or a project (its active model)")],
    dataset: Annotated[Path, typer.Argument(help="dataset folder with masks")],
    split: Annotated[str, typer.Option(help="split prefix to evaluate: test, val, train, or 'all'")] = "test",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the metrics JSON here ('-' = stdout)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    """Dice / IoU / HD95 of a model on a dataset folder, per image and the mean."""
    _must_exist(dataset, "dataset folder")
    _model, warning = _model_source(model)
    if warning:
        typer.echo(warning, err=True)
    _threads(threads)
    from .experiment import evaluate_instances_folder, model_task, write_json
    from .predict import evaluate_folder

    instances = model_task(model) == "instances"
    if instances:  # objects from the watershed, scored against the dataset's instances/
        result = evaluate_instances_folder(model, dataset, split=split, device=device)
    else:
        result = evaluate_folder(model, dataset, split=split, device=device)
    if json_out is not None and str(json_out) == "-":
        typer.echo(json.dumps(result, indent=2))
        return
    if json_out is not None:
        write_json(json_out, result)
    typer.echo(
        f"{result['n']} images ({split}): Dice {result['dice_mean']:.4f} ± {result['dice_std']:.4f}, "
        f"IoU {result['iou_mean']:.4f}, HD95 {result['hd95_mean']:.1f} px"
        + (_instance_line(result) if instances else "")
    )


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Argument(help="new folder for the dataset (must not exist or be empty)")],
    kind: Annotated[str, typer.Option(help="glands (H&E-like) | nuclei")] = "glands",
    n_train: Annotated[int, typer.Option(help="training images")] = 24,
    n_test: Annotated[int, typer.Option(help="test images")] = 8,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    instances: Annotated[
        bool, typer.Option("--instances", help="also write instances/<id>.tif, one id per object")
    ] = False,
    object_classes: Annotated[
        int,
        typer.Option(
            help="2: objects of two classes (small dark discs, large pale rods; --kind is not used): "
            "instances/<id>.tif their ids, masks/<id>.png their class map (0 background, 1 disc, 2 rod)"
        ),
    ] = 1,
) -> None:
    """Write a synthetic dataset folder with ground truth (no network needed)."""
    from .data.synthetic import make_sample_dataset

    path = make_sample_dataset(
        out,
        n_train=n_train,
        n_test=n_test,
        size=(size, size),
        kind=kind,
        seed=seed,
        instances=instances,
        object_classes=object_classes,
    )
    what = "disc and rod" if object_classes == 2 else kind
    typer.echo(f"wrote {n_train} train + {n_test} test {what} images with masks to {path}")


# ------------------------------------------------------------------------------------------ the main job


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Option(help="new or empty folder (or an earlier demo's); default ./diffseg-demo-DATE-TIME"),
    ] = None,
    gui: Annotated[
        bool, typer.Option("--gui", help="afterwards, open napari with the project and the DiffSeg widgets")
    ] = False,
    preset: Annotated[
        str, typer.Option(help="cpu (a few minutes on a laptop) | tiny (seconds, for tests)")
    ] = "cpu",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads of the training jobs (default: one per core but one)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print report.json's numbers at the end")] = False,
) -> None:
    """The whole loop on generated sample data, through the real backend, with an HTML report.

    Pretraining, co-training round 1, proposals, a simulated annotator, round 2, test Dice;
    the report is OUT/report/report.html. --gui then opens napari on the project.
    """
    from .demo import DEMO_PRESETS, default_out, prepare_out, run_demo

    if threads is not None and threads < 1:
        raise _user_error("--threads must be at least 1")
    if preset not in DEMO_PRESETS:
        raise _user_error(f"unknown --preset {preset!r}; choose one of {', '.join(DEMO_PRESETS)}")
    if gui:
        from ._widgets.launch import check_gui

        check_gui()  # before minutes of work, not after
    folder = prepare_out(out if out is not None else default_out())
    say = (lambda _msg: None) if as_json else (lambda msg: typer.echo(msg, err=True))
    say(f"diffseg demo (preset {preset}) in {folder}")
    try:
        numbers = run_demo(
            folder, DEMO_PRESETS[preset], progress=not quiet and not as_json, say=say, threads=threads
        )
    except KeyboardInterrupt:
        typer.echo(f"aborted: the backend and its jobs were stopped; what was done is in {folder}", err=True)
        raise typer.Exit(130) from None
    if as_json:
        _print_json(numbers)
    else:
        dice = ", ".join(f"round {r['round']} {r['test_dice_mean']:.3f}" for r in numbers["rounds"])
        typer.echo(
            f"students' test Dice: {dice}; mean edit Dice of the corrections "
            f"{numbers['mean_edit_dice']:.3f}; {numbers['seconds']['total']:.0f} s in all"
        )
        typer.echo(f"report: {numbers['report']}")
    if gui:
        from ._widgets.launch import open_project

        open_project(folder / "project")


# ------------------------------------------------------------------------------------------ project store


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, allow_nan=True))


def _import_summary(result: Any) -> str:
    parts = [f"{len(result.added)} new image(s)"]
    if result.existing:
        parts.append(f"{len(result.existing)} already in the project")
    if result.masks_saved:
        parts.append(f"{len(result.masks_saved)} mask(s) saved as ground truth")
    if result.masks_skipped:
        parts.append(
            f"{len(result.masks_skipped)} mask(s) not saved because the image already has a different "
            "annotation (save a correction instead)"
        )
    return ", ".join(parts)


_BINARIZE_HELP = (
    "binary project: take every mask value > 0 as foreground, even in masks painted with many labels (object "
    "ids, classes), which are refused otherwise"
)
_MULTICLASS_MOVED = (
    "--multiclass is now the project's task, chosen when it is created: diffseg init PROJECT --task multiclass "
    "--classes background,CLASS1,CLASS2 (this project's task is {task})"
)

_AXES_HELP = (
    "how to read the files' axes, overriding their metadata: OME letters T, Z, C, Y, X in storage order, one "
    "per dimension (e.g. CYX: channels; TYX: time points, one image each; ZYX: a z-stack)"
)


@app.command()
def init(
    project: Annotated[Path, typer.Argument(help="new or empty folder for the project")],
    images: Annotated[
        Path | None, typer.Option(help="dataset folder (images/, masks/, split.csv) or a folder of images")
    ] = None,
    masks: Annotated[
        Path | None, typer.Option(help="masks folder for a plain --images folder (matched by file stem)")
    ] = None,
    task: Annotated[
        str,
        typer.Option(
            help="what the masks hold: binary (0 = background, 1 = foreground), multiclass (class values "
            "0..K-1, named with --classes) or instances (object ids: each object its own id)"
        ),
    ] = "binary",
    classes: Annotated[
        str | None,
        typer.Option(
            help="the class names, background first, e.g. background,tumour,stroma (a colour may follow "
            "a name: tumour:#ff0000); required for --task multiclass. --task instances: background and the "
            "object classes (background,nucleus,mitosis: objects of two classes, a dataset folder's masks/ "
            "then being each image's class map beside its instances/)"
        ),
    ] = None,
    multiclass: Annotated[bool, typer.Option("--multiclass", help="the same as --task multiclass")] = False,
    binarize: Annotated[bool, typer.Option("--binarize", help=_BINARIZE_HELP)] = False,
    axes: Annotated[str | None, typer.Option(help=_AXES_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Create a project and optionally import a dataset folder (or an images folder plus a masks folder).

    The project's task is fixed here: binary (default), multiclass with named classes, or instances (a
    dataset folder's instances/ masks are imported for an instance project; with several object classes,
    its masks/ beside them as the class maps each object takes its class from). Every mask is checked
    against it before the project is created."""
    from .base.masks import check_task_mask
    from .base.task import make_task
    from .project import Project, collect_paths
    from .project.importing import load_images

    if masks is not None and images is None:
        raise _user_error("--masks needs --images: pass the images folder the masks belong to")
    if axes is not None and images is None:
        raise _user_error("--axes needs --images: it says how to read the imported files")
    if multiclass:
        if task not in ("binary", "multiclass"):
            raise _user_error(f"--multiclass means --task multiclass; it cannot go with --task {task}")
        task = "multiclass"
    chosen = make_task(task, classes)  # a bad task or class list fails before any file is read
    items = (
        collect_paths([images], masks, axes=axes, instances=task == "instances", classed=chosen.classed)
        if images is not None
        else []
    )
    first: tuple[int, str] | None = None
    for item in items:  # decode and check every file before the project is created
        for image in load_images(item, binary_masks=False):
            if image.mask is not None:
                check_task_mask(image.mask, chosen.labels, source=f"mask {item.mask}", binarize=binarize)
                if chosen.classed:
                    _check_object_classes(chosen, image.mask, image.classes, item)
            c = int(image.chw.shape[0])
            if first is None:
                first = (c, image.name)
            elif c != first[0] and not {c, first[0]} <= {1, 3}:
                raise _user_error(
                    f"{item.image} ({image.name}) has {c} channel(s) but {first[1]} has {first[0]}: a project's "
                    "channel count is fixed at its first import. Import them into separate projects, or pass "
                    "--axes if the axes were read wrongly"
                )
    notes: list[str] = []
    with Project.create(project, task=chosen) as proj:
        result = proj.import_items(items, binarize=binarize, validate=False, notes=notes) if items else None
        counts = proj.counts()
    if not as_json:
        for note in notes:
            typer.echo(f"note: {note}", err=True)
    if as_json:
        _print_json(
            {
                "project": str(project),
                "task": chosen.to_dict(),
                **counts,
                "import": result.to_dict() if result else None,
            }
        )
        return
    msg = f"created project {project} (task: {chosen})"
    if result is not None:
        msg += f": {_import_summary(result)}"
    typer.echo(msg)


def _check_object_classes(task: Any, ids: Any, classes: Any, item: Any) -> None:
    """An imported instance mask of a project of several object classes: its class map is there and gives
    every object a class in 1..n (before the project is created)."""
    from .base.masks import object_classes_from_map

    if classes is None:
        if not ids.any():
            return
        raise _user_error(
            f"mask {item.mask} of image {item.image.name}: the project's objects are of {task.object_classes} "
            f"classes ({_object_class_list(task)}) but the mask has no class map: a dataset folder needs "
            "masks/<id> (0 background, each object's pixels its class) beside instances/<id>.tif"
        )
    object_classes_from_map(
        ids, classes, task.object_classes, source=f"image {item.image.name} (class map {item.classes})"
    )


def _object_class_list(task: Any) -> str:
    """``1 = disc, 2 = rod``: the object classes of an instance project and their values."""
    return ", ".join(f"{k} = {c.name}" for k, c in enumerate(task.classes) if k)


@app.command("import")
def import_(
    project: Annotated[Path, typer.Argument(help="project folder")],
    paths: Annotated[list[Path], typer.Argument(help="image files, folders of images or dataset folders")],
    masks: Annotated[
        Path | None, typer.Option(help="ground-truth masks folder (matched by file stem)")
    ] = None,
    split: Annotated[str, typer.Option(help="split of the imported files: train, val, test...")] = "train",
    binarize: Annotated[bool, typer.Option("--binarize", help=_BINARIZE_HELP)] = False,
    multiclass: Annotated[bool, typer.Option("--multiclass", hidden=True)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    level: Annotated[
        int, typer.Option(help="OME-Zarr: resolution level to import (0 = full resolution)")
    ] = 0,
    region: Annotated[
        str | None,
        typer.Option(metavar="Y,X,HEIGHT,WIDTH", help="OME-Zarr: import only this region of the level"),
    ] = None,
    axes: Annotated[str | None, typer.Option(help=_AXES_HELP)] = None,
) -> None:
    """Add images (and ground-truth masks) to a project; images already in it are skipped.

    Axes come from the file (ImageJ and OME-TIFF metadata, every OME series as its own image STEM-sN); a
    time-lapse becomes one image per time point (STEM-t000, ...); where a plain file is ambiguous the
    assumption is printed and --axes overrides it. A z-stack is one 3D image (its mask a (Z, Y, X) TIFF);
    jobs train and propose on its planes.

    OME-Zarr images are read lazily: only the chosen level (default: full resolution) or --region of it is
    read, and it must fit a project image; `diffseg predict` segments a whole slide tile by tile.
    """
    from .data.ome_zarr import is_ome_zarr
    from .project import Project

    zarrs = [p for p in paths if is_ome_zarr(p)]
    files = [p for p in paths if p not in zarrs]
    if zarrs and masks is not None and not files:
        raise _user_error("--masks pairs mask files with image files; it does not apply to OME-Zarr images")
    if (level or region) and not zarrs:
        raise _user_error("--level and --region apply to OME-Zarr images only")
    if axes is not None and zarrs:
        raise _user_error("--axes applies to image files; OME-Zarr images carry their own axes")
    from .base.import_check import import_warnings

    notes: list[str] = []
    with Project.open(project) as proj:
        if multiclass and proj.task.kind != "multiclass":
            raise _user_error(_MULTICLASS_MOVED.format(task=proj.task))
        before = proj.images()
        result = (
            proj.import_files(files, masks, split=split, binarize=binarize, axes=axes, notes=notes)
            if files
            else None
        )
        result = _import_ome_zarr(proj, zarrs, level, _region(region), split, result)
        added = [proj.image(i) for i in result.added]
    if as_json:
        _print_json(result.to_dict())
        return
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"imported into {project}: {_import_summary(result)}")
    for warning in import_warnings(before, added):
        typer.echo(f"warning: {warning}", err=True)


def _region(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        y, x, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise _user_error(f"--region takes Y,X,HEIGHT,WIDTH in pixels, got {text!r}") from None
    return y, x, h, w


def _import_ome_zarr(
    proj: Any,
    zarrs: list[Path],
    level: int,
    region: tuple[int, int, int, int] | None,
    split: str,
    before: Any,
) -> Any:
    """Import OME-Zarr images (a level, or a region of it) as project images; merged into ``before``."""
    from .data.io import DEFAULT_MAX_PIXELS
    from .data.ome_zarr import image_stem, read_ome_zarr
    from .project.records import ImportResult

    ids: list[str] = []
    added: list[str] = []
    existing: list[str] = []
    for z in zarrs:
        chw = read_ome_zarr(z, level=level, region=region, max_pixels=DEFAULT_MAX_PIXELS)
        name = image_stem(z) + (f"_L{level}" if level else "")
        if region is not None:
            name += "_y{}_x{}_{}x{}".format(*region)
        where = f"#level={level}" + ("&region={},{},{},{}".format(*region) if region else "")
        image_id, new = proj.add_array(chw, name, split=split, source=f"ome-zarr:{Path(z).resolve()}{where}")
        ids.append(image_id)
        (added if new else existing).append(image_id)
    if before is None:
        return ImportResult(ids=tuple(ids), added=tuple(added), existing=tuple(existing))
    return ImportResult(
        ids=(*before.ids, *ids),
        added=(*before.added, *added),
        existing=(*before.existing, *existing),
        masks_saved=before.masks_saved,
        masks_skipped=before.masks_skipped,
    )


@app.command()
def correct(
    project: Annotated[Path, typer.Argument(help="project folder")],
    image: Annotated[str, typer.Argument(help="image id or name (see `diffseg images`)")],
    mask_file: Annotated[Path, typer.Argument(help="the corrected mask (PNG or TIFF, 0 = background)")],
    replaces: Annotated[
        int | None, typer.Option(help="version this edit started from (default: the current latest)")
    ] = None,
    proposal: Annotated[
        int | None, typer.Option(help="proposal id the correction started from (records edit Dice)")
    ] = None,
    kind: Annotated[str, typer.Option(help="correction | ground_truth")] = "correction",
    author: Annotated[str, typer.Option(help="who made the correction")] = "",
    binarize: Annotated[bool, typer.Option("--binarize", help=_BINARIZE_HELP)] = False,
    multiclass: Annotated[bool, typer.Option("--multiclass", hidden=True)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the new version as JSON")] = False,
    planes: Annotated[
        str | None,
        typer.Option(
            help="z-stack only: the planes the mask annotates, e.g. 0,2 (default: every plane holding a label)"
        ),
    ] = None,
    classes_file: Annotated[
        Path | None,
        typer.Option(
            "--classes",
            help="an instance project of several object classes: the class map beside the ids mask (PNG or "
            "TIFF of its size, 0 = none, 1..n = class); each object takes the class painted under most of it",
        ),
    ] = None,
) -> None:
    """Save a mask file as a new annotation version of an image (what the plugin's save does).

    A z-stack's mask is a (Z, H, W) TIFF; only its annotated planes are trained on as labelled. In an instance
    project of several object classes the mask holds object ids and --classes their class map."""
    from .base.errors import DataError
    from .base.masks import check_task_mask
    from .data.io import read_mask, read_mask_stack
    from .project import Project

    chosen: list[int] | None = None
    if planes is not None:
        try:
            chosen = [int(z) for z in planes.split(",") if z.strip()]
        except ValueError as exc:
            raise DataError(f"--planes {planes!r}: give plane indices separated by commas, e.g. 0,2") from exc
    with Project.open(project) as proj:
        if multiclass and proj.task.kind != "multiclass":
            raise _user_error(_MULTICLASS_MOVED.format(task=proj.task))
        rec = proj.image(image)
        task = proj.task
        if classes_file is not None and not task.classed:
            raise _user_error(
                f"--classes gives the objects' classes of an instance project of several object classes; this "
                f"project's task is {task}: save the mask without --classes"
            )
        if rec.is_stack:
            shape = (rec.planes, rec.height, rec.width)
            mask = read_mask_stack(mask_file, shape, binary=False)
            class_map = None if classes_file is None else read_mask_stack(classes_file, shape, binary=False)
        else:
            mask = read_mask(mask_file, binary=False)
            class_map = None if classes_file is None else read_mask(classes_file, binary=False)
        check_task_mask(mask, task.labels, source=mask_file.name, binarize=binarize)  # messages name the file
        if task.classed and class_map is None and mask.any():
            raise _user_error(
                f"{mask_file.name}: this project's objects are of {task.object_classes} classes "
                f"({_object_class_list(task)}): pass --classes FILE, a class map of the mask's size (PNG or "
                "TIFF, 0 = none, each object's pixels its class)"
            )
        base = replaces if replaces is not None else proj.latest_version(rec.id)
        version = proj.save_annotation(
            rec.id,
            mask,
            kind=kind,
            replaces=base,
            proposal_id=proposal,
            author=author,
            planes=chosen,
            binarize=task.kind == "binary",  # stored as 0/1, as a binary mask file always was
            classes=class_map,
        )
        ann = proj.annotation(rec.id, version)
    if as_json:
        _print_json(ann.to_dict() if ann is not None else {})
        return
    extra = ""
    if ann is not None and ann.edit_dice is not None:
        extra = f" (edit Dice {ann.edit_dice:.3f}, {ann.pixels_changed} pixels changed"
        if ann.objects_changed is not None:  # an instance project: the cost in objects too
            extra += (
                f"; objects: {ann.objects_added} added, {ann.objects_removed} removed, "
                f"{ann.objects_changed} changed"
            )
        extra += ")"
    typer.echo(f"saved annotation version {version} of {rec.name} ({rec.id}) as {kind}{extra}")


@app.command()
def check(
    project: Annotated[Path, typer.Argument(help="project folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Verify the database and that every file exists with its recorded hash; exit 1 if not ok."""
    from .project import check_project

    report = check_project(project)
    if as_json:
        _print_json(report)
    else:
        status = "ok" if report["ok"] else f"NOT OK ({len(report['problems'])} problem(s))"
        typer.echo(
            f"{project}: {status}: {report['images']} image(s), {report['annotations']} annotation "
            f"version(s), {report['models']} model(s)"
        )
        for problem in report["problems"]:
            typer.echo(f"  - {problem}")
    if not report["ok"]:
        raise typer.Exit(1)


@app.command("images")
def images_(
    project: Annotated[Path, typer.Argument(help="project folder")],
    state: Annotated[str | None, typer.Option(help="only images in this state")] = None,
    split: Annotated[str | None, typer.Option(help="only images in this split")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON")] = False,
) -> None:
    """List a project's images: id, name, state, uncertainty, split (--json adds axes, shape, channel names
    and, for a z-stack, its most uncertain plane)."""
    from .project import Project

    with Project.open(project) as proj:
        records = proj.images(state=state, split=split)
    if as_json:
        _print_json(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "state": r.state,
                    "uncertainty": r.uncertainty,
                    "split": r.split,
                    "axes": r.axes,
                    "shape": list(r.shape),
                    "channel_names": list(r.channel_names),
                    "plane": r.plane,
                }
                for r in records
            ]
        )
        return
    if not records:
        typer.echo("no images")
        return
    width = max(4, *(len(r.name) for r in records))
    typer.echo(f"{'id':16}  {'name':{width}}  {'state':12}  {'uncertainty':>11}  split")
    for r in records:
        unc = "-" if r.uncertainty is None else f"{r.uncertainty:.4f}"
        typer.echo(f"{r.id:16}  {r.name:{width}}  {r.state:12}  {unc:>11}  {r.split}")


def _run_job(
    project: Path, kind: str, params: dict[str, Any], quiet: bool, as_json: bool, threads: int | None = None
) -> None:
    """Validate ``params`` as the typed parameters of a ``kind`` job, run the pre-flight (the same as
    the backend's: a job the project or this machine cannot run is refused, exit 2, and no job is
    recorded), say what it will cost, record it, run it here. Torch is imported only after the checks."""
    from .backend.preflight import check_job
    from .base.contracts import CotrainParams, parse_job_params
    from .project import Project

    typed = parse_job_params(kind, params)
    with Project.open(project) as proj:
        check_job(proj, typed)
        estimate = _estimate(proj, typed)
    if estimate and not quiet and not as_json:
        typer.echo(estimate, err=True)
    _threads(threads)
    from .backend.jobs import execute_job, start_job

    with Project.open(project) as proj:
        job_id = start_job(proj, kind, typed)
        record = proj.job(job_id)
    if isinstance(typed, CotrainParams) and typed.nproc > 1:
        # several processes under torchrun (DDP): the same worker the backend launches
        import subprocess

        from .backend.runner import worker_command

        out = subprocess.DEVNULL if quiet or as_json else None
        subprocess.call(worker_command(sys.executable, project, record), stdout=out, stderr=out)
    else:
        bars = EventBars(enabled=not quiet and not as_json, leave=False)
        try:
            execute_job(project, job_id, report=bars)
        finally:
            bars.close()
    with Project.open(project) as proj:
        active = proj.active_model()
        job = proj.job(job_id)
        task = proj.task
    state = job.state
    summary = {
        "job": job_id,
        "kind": kind,
        "state": state,
        "active_model": active.id if active else None,
        "error": job.error,
    }
    val = _val_line(active.metrics if active else {}, task) if kind == "cotrain" and state == "done" else ""
    if as_json:
        if val and active is not None:
            summary["metrics"] = active.metrics
        _print_json(summary)
    else:
        typer.echo(f"job {job_id} ({kind}): {state}; active model: {summary['active_model']}")
        if val:
            typer.echo(val)
    if state != "done":
        raise typer.Exit(1)


def _val_line(metrics: dict[str, Any], task: Any) -> str:
    """``validation (3 images): Dice 0.812 (tumour 0.850, stroma 0.774)`` from a model's metrics; for an
    instance project with the objects' AP@0.5 and F1@0.5; empty without validation images."""
    if "val_dice" not in metrics:
        return ""
    line = f"validation ({int(metrics.get('val_n', 0))} image(s)): Dice {metrics['val_dice']:.3f}"
    per = [
        f"{c.name} {metrics[f'val_dice_class{k}']:.3f}"
        for k, c in enumerate(task.classes)
        if k and f"val_dice_class{k}" in metrics
    ]
    if per:
        line += f" ({', '.join(per)})"
    if "val_ap_50" in metrics:
        line += f"; objects: AP@0.5 {metrics['val_ap_50']:.3f}, F1@0.5 {metrics['val_f1_50']:.3f}"
        if "val_class_accuracy" in metrics:
            line += f", class right for {metrics['val_class_accuracy']:.1%} of the matched objects"
        if "val_ap_50_default_watershed" in metrics:
            line += (
                f" (watershed tuned on these images; AP@0.5 {metrics['val_ap_50_default_watershed']:.3f} "
                "with the defaults)"
            )
    return line


def _estimate(proj: Any, typed: Any) -> str:
    """``pretrain: about 1.1 min for 5 image(s) of 565×584 (...)``: the job's plan (base/cost.py)."""
    from .base.cost import REFERENCE, format_seconds, is_label_free, job_plan

    try:
        preset = typed.resolve_preset()
        kind = typed.kind
        active = proj.active_model()
        plan = job_plan(
            kind,
            preset,
            proj.images(),
            warm_start=active is not None,
            label_free=is_label_free(active),
            rounds=getattr(typed, "rounds", 1) or 1,
            ids=getattr(typed, "ids", None),
            steps=getattr(typed, "steps", None),
            samples=getattr(typed, "samples", None),
            sample_rounds=getattr(typed, "rounds", None) if kind == "propose" else None,
        )
    except Exception:  # an estimate never stops a job
        return ""
    sizes = f" of {plan.sizes}" if plan.sizes else ""
    notes = "".join(f"; {n}" for n in plan.notes)
    return (
        f"{typed.kind} (preset {preset.name}): about {format_seconds(plan.seconds)} for {plan.images} image(s)"
        f"{sizes} on {REFERENCE} ({plan.breakdown()}); a busy machine takes longer{notes}"
    )


@app.command()
def pretrain(
    project: Annotated[Path, typer.Argument(help="project folder")],
    preset: Annotated[str, _preset_option("compute budget")] = "cpu",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Unsupervised teacher pretraining (cycle; on fluorescence also pulled towards a threshold's split,
    elsewhere kept spatially smooth) on the project's training images; saves model round 0, whose proposals
    take one step, sharpened on fluorescence by a temperature fitted to that split. On bright-field images
    (H&E, EM, fundus) it seldom finds the objects: annotate two or three images and co-train instead."""
    _run_job(project, "pretrain", {"preset": preset, "seed": seed, "device": device}, quiet, as_json, threads)


@app.command()
def propose(
    project: Annotated[Path, typer.Argument(help="project folder")],
    ids: Annotated[
        list[str] | None, typer.Option("--ids", help="image ids or names (default: all unreviewed)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="DDIM steps S")] = None,
    samples: Annotated[int | None, typer.Option(help="samples E per image")] = None,
    rounds: Annotated[int | None, typer.Option(help="chained rounds R")] = None,
    preset: Annotated[
        str | None,
        _preset_option(
            "defaults for S, E, R and tiling (default: the preset the active model was trained with)"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Teacher pseudo-labels with uncertainty for images, from the active model."""
    given = {"ids": ids, "steps": steps, "samples": samples, "rounds": rounds, "preset": preset}
    params: dict[str, Any] = {"device": device, **{k: v for k, v in given.items() if v is not None}}
    _run_job(project, "propose", params, quiet, as_json, threads)


@app.command()
def cotrain(
    project: Annotated[Path, typer.Argument(help="project folder")],
    rounds: Annotated[int, typer.Option(help="co-training rounds")] = 1,
    preset: Annotated[str, _preset_option("compute budget")] = "cpu",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    nproc: Annotated[int, typer.Option(help="processes under torchrun (DDP): one per GPU")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="override a preset field (repeatable), e.g. teacher_keep_best=true deploy_best=true",
        ),
    ] = None,
) -> None:
    """Co-training round(s): teacher + twin students on annotations, unlabeled images and pseudo-labels.

    ``--nproc N`` runs the round on N processes under torchrun with DDP (one per GPU; gloo on CPU).
    ``--set KEY=VALUE`` turns on an opt-in part of the method for this round (docs/method.md), e.g.
    ``--set teacher_keep_best=true --set deploy_best=true``: the model predicts with its teacher where the
    teacher scores the project's annotated val images above the students.
    """
    params = {"rounds": rounds, "preset": preset, "seed": seed, "device": device, "nproc": nproc}
    if set_:
        params["overrides"] = _parse_set(set_)
    _run_job(project, "cotrain", params, quiet, as_json, threads)


@app.command()
def serve(
    project: Annotated[Path, typer.Argument(help="project folder")],
    host: Annotated[
        str, typer.Option(help="address to listen on; anything but loopback needs a token")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DIFFSEG_TOKEN",
            help="require 'Authorization: Bearer TOKEN' (>= 16 characters); prefer the DIFFSEG_TOKEN "
            "variable, which other users cannot see in the process list",
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted upload, in MiB")] = 256.0,
    max_pixels: Annotated[int, typer.Option(help="largest accepted H*W of an uploaded image")] = 2**26,
    jobs: Annotated[
        bool, typer.Option("--jobs/--no-jobs", help="run queued jobs (--no-jobs: only queue them)")
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the training backend (HTTP API under /api/v1, OpenAPI at /openapi.json) for a project."""
    from .backend.app import check_token, is_loopback
    from .backend.app import serve as run_server

    if max_upload_mb <= 0:
        raise _user_error("--max-upload-mb must be positive")
    if token is None and not is_loopback(host):
        raise _user_error(
            f"refusing to listen on {host} without a token: anyone who can reach it could read and change "
            "the project. Pass --token (or set DIFFSEG_TOKEN), or listen on 127.0.0.1"
        )
    check_token(token)
    from .project import Project

    Project.open(project).close()  # a bad folder fails here, before the banner
    typer.echo(
        f"serving {project} on http://{host}:{port}/api/v1 "
        f"({'token required' if token else 'no token: this machine only'}); Ctrl-C stops",
        err=True,
    )
    run_server(
        project,
        host=host,
        port=port,
        token=token,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=max_pixels,
        run_jobs=jobs,
        log_level=log_level,
    )


class _Command(TyperCommand):
    """Usage and help in the classic form: ``diffseg init [OPTIONS] PROJECT``, value names in capitals
    (``--images IMAGES``), instead of typer's ``{project}`` and ``<path>``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.metavar = param.metavar or (param.name or "").upper()
                # the help names the argument and says what it is; typer's "<path>" / "<list[Path]>"
                # beside it says nothing more
                setattr(param, "display_type_rich", _no_type)  # noqa: B010
            elif param.metavar is None and isinstance(param, TyperOption) and not param.is_flag:
                longest = max(param.opts, key=len).lstrip("-")
                param.metavar = longest.replace("-", "_").upper()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name += "..." if param.nargs != 1 else ""
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def _no_type(*_args: Any, **_kwargs: Any) -> str:
    return ""


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs → overrides; a value is read as JSON (``0``, ``0.5``, ``[8,16]``), else kept as text
    (the preset's own check then names a wrong type)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise _user_error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw, parse_constant=_refuse_constant)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _user_error(msg: str) -> Exception:
    from .base.errors import DiffsegError

    return DiffsegError(msg)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning our errors into one-line messages and exit code 2."""
    from .base.errors import DiffsegError

    try:
        # without standalone mode, click returns (not raises) the code of a `typer.Exit(code)`
        result = app(args=argv, standalone_mode=False, prog_name="diffseg")
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
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


for _info in app.registered_commands:  # every subcommand, however declared, prints its usage as above
    if _info.cls is None or _info.cls is TyperCommand:
        _info.cls = _Command


if __name__ == "__main__":
    sys.exit(main())
