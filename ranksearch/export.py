"""Export a chosen trial: its config, its compact model (safetensors and ONNX), a README.

An export folder holds no pickled object: :func:`load` rebuilds the compact model's structure
from ``plan.json`` (the model name, the scheme and the inner width of every pair) and fills it
from ``model.safetensors``; ``config.yaml`` reruns the trial (``ranksearch train``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import config as cfg
from . import models, svd
from .conventions import FLOPS_CONVENTION
from .errors import UserError
from .report.text import STATE_WORDS
from .runs import atomic_write_text, load_state, read_json, write_json

__all__ = ["ExportError", "select_trial", "export_run", "export_trial", "load"]

FILES = ("config.yaml", "plan.json", "model.safetensors")


class ExportError(UserError):
    """Nothing to export, or a folder that is not an export; one line for the user."""


def _describe(rows: pd.DataFrame) -> str:
    return "; ".join(
        f"trial {int(r.number)}: accuracy {r.accuracy:.4f}, FLOPs {int(r.flops):,} "
        f"({r.flops_reduction:.2f}x)" for r in rows.itertuples()
    )


def parse_max_flops(value: str | float, reference_flops: float) -> float:
    """``"4x"`` is a reduction of the reference's FLOPs; a plain number is absolute FLOPs."""
    text = str(value).strip().lower()
    try:
        if text.endswith("x"):
            factor = float(text[:-1])
            if not factor > 0:  # nan too
                raise ValueError
            return reference_flops / factor
        flops = float(text)
    except ValueError:
        raise ExportError(f"expected FLOPs (e.g. 2.5e6) or a reduction (e.g. 4x), got "
                          f"{value!r}", argument="max_flops") from None
    if not flops > 0:  # nan too
        raise ExportError(f"expected a positive number, got {value!r}", argument="max_flops")
    return flops


def select_trial(
    trials: pd.DataFrame, front: pd.DataFrame, reference_flops: float, *,
    trial: int | None = None, max_flops: str | float | None = None,
    min_accuracy: float | None = None,
) -> int:
    """The trial number a selection names (see ``ranksearch export --help``): exactly one of
    ``trial``, ``max_flops`` and ``min_accuracy``."""
    if sum(choice is not None for choice in (trial, max_flops, min_accuracy)) != 1:
        raise ExportError("name exactly one of trial, max_flops and min_accuracy")
    if trial is not None:
        rows = trials[(trials["kind"] == "svd") & (trials["number"] == trial)]
        if rows.empty:
            raise ExportError(f"no trial {trial} in the study", argument="trial")
        if rows.iloc[0]["state"] != "COMPLETE":
            state = STATE_WORDS.get(rows.iloc[0]["state"], rows.iloc[0]["state"].lower())
            raise ExportError(f"trial {trial} is {state}, not complete", argument="trial")
        return trial
    if front.empty:
        raise ExportError("the study has no complete trial yet")
    if max_flops is not None:
        limit = parse_max_flops(max_flops, reference_flops)
        fits = front[front["flops"] <= limit]
        if fits.empty:
            closest = front.nsmallest(3, "flops")
            raise ExportError(f"no front point has at most {limit:,.0f} FLOPs; the closest: "
                              + _describe(closest))
        return int(fits.sort_values(["accuracy", "flops"], ascending=[False, True])
                   .iloc[0]["number"])
    assert min_accuracy is not None
    if not 0 <= min_accuracy <= 100:  # nan too
        raise ExportError(f"expected an accuracy (0-1) or a percentage (up to 100), got "
                          f"{min_accuracy:g}", argument="min_accuracy")
    floor = min_accuracy / 100 if min_accuracy > 1 else min_accuracy
    fits = front[front["accuracy"] >= floor]
    if fits.empty:
        closest = front.nlargest(3, "accuracy")
        raise ExportError(f"no front point reaches accuracy {floor:.4f}; the closest: "
                          + _describe(closest))
    return int(fits.sort_values(["flops", "accuracy"], ascending=[True, False])
               .iloc[0]["number"])


def export_run(run_dir: str | Path, out: str | Path, *, trial: int | None = None,
               max_flops: str | float | None = None, min_accuracy: float | None = None
               ) -> Path:
    """Select a trial of the study in ``run_dir`` (exactly one of ``trial``, ``max_flops``:
    FLOPs or a reduction such as ``"4x"``, and ``min_accuracy``) and export it to ``out``."""
    from .report.pareto import pareto_front, trials_frame
    from .search.study import open_run_study

    run, _, study = open_run_study(run_dir)
    trials = trials_frame(study, run.path)
    reference = study.user_attrs.get("reference")
    if reference is None:
        raise ExportError(f"{run.path}: the study has no reference yet")
    front = pareto_front(trials)
    number = select_trial(trials, front, reference["flops"], trial=trial,
                          max_flops=max_flops, min_accuracy=min_accuracy)
    inside = Path(out).resolve()
    if inside == run.path.resolve() or any(
            (run.path / owned).resolve() in (inside, *inside.parents)
            for owned in ("trials", "baselines", "cache")):
        raise ExportError(f"{out} is inside the folders of the run {run.path}, whose files it "
                          "would replace; export to a folder of its own", argument="out")
    if number not in set(front["number"].astype(int)):
        warnings.warn(f"trial {number} is not on the Pareto front ({_off_front(trials, number)});"
                      " exporting it as asked", stacklevel=2)
    return export_trial(run.trial_dir(number), out)


def _off_front(trials: pd.DataFrame, number: int) -> str:
    row = trials[(trials["kind"] == "svd") & (trials["number"] == number)].iloc[0]
    if not row["feasible"]:
        return "outside the study's constraints"
    if not row["full_budget"]:
        return "not trained on the full budget"
    return "another trial is at least as good in both objectives"


def export_trial(trial_dir: Path, out: str | Path) -> Path:
    """Write the export folder of the trial whose files are in ``trial_dir``.

    The folder is assembled under a temporary name and renamed into place, so a kill leaves
    either no export or a whole one.
    """
    missing = [f for f in (*FILES, "metrics.json") if not (trial_dir / f).is_file()]
    if missing:
        raise ExportError(f"{trial_dir}: the trial's {missing[0]} is missing")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = load(trial_dir)  # a damaged trial fails here, named as such
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        for name in FILES:
            shutil.copyfile(trial_dir / name, staging / name)
        plan = read_json(staging / "plan.json")
        _write_onnx(model, plan["input_shape"], staging / "model.onnx")
        metrics = read_json(trial_dir / "metrics.json")
        # The trial's measured numbers, machine-readable, and which trial they are.
        number = int(trial_dir.name) if trial_dir.name.isdigit() else None
        write_json(staging / "metrics.json", {"trial": number, **metrics})
        metric = cfg.load(staging / "config.yaml").metric.name
        layer_order = [name for name, _ in model.named_modules()]
        atomic_write_text(staging / "README.md",
                          _readme(metrics, plan, trial_dir.name, metric, layer_order))
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        if not (target / "plan.json").is_file() and any(target.iterdir()):
            raise ExportError(f"{target}: exists and is not an export folder; export to "
                              "another folder")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _write_onnx(model: nn.Module, input_shape: list[int], path: Path) -> None:
    example = torch.randn(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), str(path), input_names=["input"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _inputs(plan: dict[str, Any]) -> str:
    """What the model expects of its inputs."""
    stats = plan.get("normalisation")
    if not stats:
        return "Inputs: as the study's data factory yields them."
    mean = ", ".join(f"{v:.4f}" for v in stats["mean"])
    std = ", ".join(f"{v:.4f}" for v in stats["std"])
    return (f"Inputs: images scaled to [0, 1], then per channel `(x - mean) / std` with mean "
            f"({mean}) and std ({std}) (also in `plan.json`).")


def _deployed_form(width: int | None) -> str:
    """How the model deploys a layer: its plan entry is the pair's inner width, rounded up
    from the kept rank with zero singular values (the same function), or None when merged."""
    return "one dense layer (merged back)" if width is None else f"two layers, inner width {width}"


def _readme(metrics: dict[str, Any], plan: dict[str, Any], number: str, metric: str,
            layer_order: list[str]) -> str:
    # The JSON files list layers alphabetically (layer1.10 before layer1.2); the table
    # follows the model.
    position = {name: i for i, name in enumerate(layer_order)}
    ranks = sorted(metrics["ranks"].items(), key=lambda item: position.get(item[0], len(position)))
    rank_lines = "\n".join(
        f"| `{name}` | {rank} | {_deployed_form(plan['plan'].get(name))} |"
        for name, rank in ranks)
    return f"""# ranksearch export: trial {number}

| | |
|---|---|
| model | `{plan['model']}`, {plan['scheme']}-wise SVD |
| validation {metric} | {100 * metrics['accuracy']:.2f} % |
| test {metric} | {100 * metrics['test_accuracy']:.2f} % |
| FLOPs | {metrics['flops']:,} ({metrics['flops_reduction']:.2f}x fewer than the dense reference) |
| parameters | {metrics['params']:,} |

FLOPs: {FLOPS_CONVENTION}, input shape {tuple(plan['input_shape'])}.

{_inputs(plan)}

## Load

```python
import ranksearch
model = ranksearch.load("path/to/this/folder")  # plain torch.nn layers, nothing unpickled
```

`model.onnx` runs in ONNX Runtime (input `input`, any batch size). `ranksearch train
config.yaml` reruns the trial with these exact ranks.

## Kept rank per layer

| layer | kept rank | deployed as |
|---|---|---|
{rank_lines}
"""


def load(export_dir: str | Path, *, deployed: bool = True) -> nn.Module:
    """Rebuild the compact model of an export (or trial) folder, in eval mode.

    By default it is the deployed model that the trial measured: batch norms folded into the
    convolutions, channels_last (:func:`ranksearch.svd.for_inference`). ``deployed=False``
    returns the compact model with its batch norms, as trained (to fine-tune it further).

    The structure comes from ``plan.json`` and the weights from ``model.safetensors``; nothing
    is unpickled, so loading an export from elsewhere runs none of its code (a
    ``module:function`` model name still imports that module to build the structure).
    """
    folder = Path(export_dir)
    missing = [f for f in ("plan.json", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        raise ExportError(f"{folder}: not an export folder ({missing[0]} is missing)")
    from safetensors import SafetensorError

    try:
        plan = read_json(folder / "plan.json")
        structure = {key: plan[key] for key in ("model", "num_classes", "in_channels", "plan",
                                                "scheme")}
    except (OSError, ValueError, KeyError, TypeError) as err:  # a truncated or edited copy
        raise ExportError(f"{folder}: plan.json cannot be read ({type(err).__name__}: {err})"
                          ) from None
    dense = models.create(structure["model"], num_classes=structure["num_classes"],
                          in_channels=structure["in_channels"])
    model = svd.build_compact(dense, structure["plan"], structure["scheme"])
    try:
        model.load_state_dict(load_state(folder / "model.safetensors"), strict=True)
    except (OSError, SafetensorError) as err:
        raise ExportError(f"{folder}: model.safetensors cannot be read ({err})") from None
    except RuntimeError:  # missing, unexpected or misshapen tensors
        raise ExportError(f"{folder}: model.safetensors does not hold the model plan.json "
                          "describes") from None
    return svd.for_inference(model) if deployed else model.eval()
