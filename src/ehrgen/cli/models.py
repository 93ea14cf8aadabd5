"""``ehrgen train``, ``generate``, ``impute`` and ``benchmark``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ehrgen.cli import app
from ehrgen.cli._common import (
    BatchSize,
    Format,
    MaxVisits,
    OutputFormat,
    Overwrite,
    Preset,
    Seed,
    Temperature,
    TopK,
    TopP,
    TrainingBatchSize,
    _bar,
    _parse_fractions,
    _read,
    _sampling,
    _write,
    console,
)
from ehrgen.errors import ConfigError

if TYPE_CHECKING:
    from ehrgen.data import Cohort


@app.command("train")
def train(
    cohort_dir: Annotated[Path, typer.Argument(help="A MEDS cohort folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output model folder.")],
    model_name: Annotated[
        str,
        typer.Option(
            "--model",
            help=(
                "A registered model: promptehr, promptehr-one-pass, "
                "promptehr-noprompt, lstm-mlp, lstm-medgan, synteg, gpt2, halo."
            ),
        ),
    ] = "promptehr",
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = (
        Preset.small
    ),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 20,
    time_budget: Annotated[
        float | None,
        typer.Option("--time-budget", help="Stop training after this many minutes."),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Stop training after this many steps."),
    ] = None,
    batch_size: TrainingBatchSize = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Validation share of the train split, used when the cohort has no "
            "tuning split.",
        ),
    ] = 0.1,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="A checkpoints/step-N folder to continue from."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate-length/--no-calibrate-length",
            help="After training, calibrate when generated patients end so that "
            "their numbers of visits follow the training cohort's.",
        ),
    ] = True,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            "--dp-epsilon",
            help="Train with differential privacy: the ε of the whole release "
            "(weights, vocabulary, population summary), per patient.",
            rich_help_panel="Differential privacy",
        ),
    ] = None,
    dp_delta: Annotated[
        float | None,
        typer.Option(
            "--dp-delta",
            help="δ of the release (default 1/patients).",
            rich_help_panel="Differential privacy",
        ),
    ] = None,
    max_grad_norm: Annotated[
        float,
        typer.Option(
            "--max-grad-norm",
            help="Gradient clipping norm; with --dp-epsilon, the bound on each "
            "patient's gradient.",
        ),
    ] = 1.0,
    dp_batch_patients: Annotated[
        int,
        typer.Option(
            "--dp-batch-patients",
            help="Patients per DP-SGD step on average (Poisson sampling).",
            rich_help_panel="Differential privacy",
        ),
    ] = 64,
    dp_bounds: Annotated[
        list[str] | None,
        typer.Option(
            "--dp-bounds",
            help="Public bounds of a numerical feature, NAME=LOW:HIGH; repeatable "
            "(an age defaults to 0:120).",
            rich_help_panel="Differential privacy",
        ),
    ] = None,
    vocabulary: Annotated[
        Path | None,
        typer.Option(
            "--vocabulary",
            help="A public vocabulary to use instead of the cohort's codes: a "
            "tokenizer.json, a MEDS codes.parquet, or a table of modality and code "
            "(with --dp-epsilon it spends no budget).",
        ),
    ] = None,
    times: Annotated[
        bool,
        typer.Option(
            "--times/--no-times",
            help="Learn the gaps between visits (a model beside the generator, given "
            "the codes); without, generated gaps come from the training cohort's "
            "quantiles per visit index.",
            rich_help_panel="Visit times and lab values",
        ),
    ] = True,
    values: Annotated[
        bool,
        typer.Option(
            "--values/--no-values",
            help="Learn lab results (the same model); without, generated labs carry "
            "no value.",
            rich_help_panel="Visit times and lab values",
        ),
    ] = True,
    overwrite: Overwrite = False,
) -> None:
    """Train a model (PromptEHR by default) on a MEDS cohort: its train split,
    validated on its tuning split. Checkpoints and metrics.jsonl go to
    OUT/training/. With --dp-epsilon, training is differentially private (DP-SGD
    over patients, PromptEHR's one-pass objective, no validation split, no length
    calibration) and the model folder states its (ε, δ)."""
    from ehrgen.models.registry import build_model
    from ehrgen.models.time_values import TimeValueConfig
    from ehrgen.training import TrainingConfig

    model = build_model(model_name, preset.value)
    dp = None
    if dp_epsilon is not None:
        dp = _dp_config(dp_epsilon, dp_delta, max_grad_norm, dp_batch_patients,
                        dp_bounds or [])  # fmt: skip
        model = _private_variant(model, model_name)
        val_fraction, calibrate = 0.0, False

    if (out / "ehrgen.json").exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds a model; pass --overwrite to replace it, or choose "
            f"another --out."
        )
    train_cohort, val_cohort = _train_and_validation(cohort_dir, val_fraction, seed)
    if dp is not None and val_cohort is not None:
        console.print(
            f"Differential privacy: the {len(val_cohort):,} patients of the tuning "
            f"split are not read (validation would spend budget)."
        )
        val_cohort = None
    training = TrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        time_budget_minutes=time_budget,
        max_steps=max_steps,
        max_grad_norm=max_grad_norm,
        dp=dp,
        time_values=TimeValueConfig(times=times, values=values)
        if times or values
        else None,
    )
    if dp is not None and (times or values):
        console.print(
            "Differential privacy: visit gaps come from the private population "
            "summary and labs carry no value (the model of gaps and values is not "
            "trained privately)."
        )
    public_vocabulary = None
    if vocabulary is not None:
        from ehrgen.tokens.vocabulary import read_vocabulary

        public_vocabulary = read_vocabulary(vocabulary, train_cohort.schema.modalities)
    console.print(
        f"Training {model_name} ({preset.value}) on {len(train_cohort):,} patients, "
        f"validating on {len(val_cohort) if val_cohort else 0:,}."
    )
    model = model.fit(
        train_cohort,
        val_cohort,
        training,
        output_dir=out / "training",
        resume_from=resume,
        progress=True,
        vocabulary=public_vocabulary,
    )
    if not _is_main_process():
        return  # under `accelerate launch`, rank 0 alone writes the model
    if calibrate and hasattr(model, "calibrate_length"):
        with console.status("Calibrating how many visits generated patients have..."):
            model.calibrate_length(train_cohort, n_samples=min(512, len(train_cohort)))
    model.save_pretrained(out, overwrite=True)
    ppl = model.training_.best_val_perplexity
    best = f", best validation perplexity {ppl:.2f}" if ppl is not None else ""
    console.print(f"[green]Saved[/green] the model to [bold]{out}[/bold]{best}.")
    if getattr(model, "time_values_", None) is not None:
        summary = model.time_values_.held_out_summary()
        held_out = f" ({summary})" if summary else ""
        console.print(f"Visit gaps and lab values: {model.time_values_!r}{held_out}.")
    if model.privacy_ is not None:
        console.print(
            f"Differentially private: {model.privacy_.summary()} "
            f"(parts in {out / 'model_card.md'}). Release the model folder's files, "
            f"not {out / 'training'}: its checkpoints hold the noise's state.",
            markup=False,
        )


def _dp_config(epsilon, delta, max_grad_norm, batch_patients, bounds):
    from ehrgen.privacy import DPConfig

    parsed = {}
    for item in bounds:
        name, _, pair = item.partition("=")
        low, _, high = pair.partition(":")
        try:
            parsed[name.strip()] = (float(low), float(high))
        except ValueError:
            raise ConfigError(
                f"--dp-bounds takes NAME=LOW:HIGH (e.g. age=0:120). Got {item!r}."
            ) from None
    return DPConfig(
        epsilon=epsilon,
        delta=delta,
        max_grad_norm=max_grad_norm,
        expected_batch_patients=batch_patients,
        numerical_bounds=parsed,
    )


def _private_variant(model, model_name: str):
    """The model to train with DP: PromptEHR switches to its one-pass objective
    (a patient is one training item); a model without DP training is refused."""
    from ehrgen.models.registry import private_models

    if not getattr(model, "supports_dp", False):
        raise ConfigError(
            f"--dp-epsilon: {model_name} cannot be trained with differential "
            f"privacy; models that can: {private_models()}."
        )
    config = getattr(model, "config", None)
    if getattr(config, "objective", None) == "paper":
        console.print(
            f"Differential privacy: {model_name} trains with the one-pass objective "
            f"(a patient is one training item, clipped as a whole)."
        )
        model.config = config.replace(objective="one-pass")
    return model


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _train_and_validation(
    cohort_dir: Path, val_fraction: float, seed: int
) -> tuple[Cohort, Cohort | None]:
    import pyarrow.parquet as pq

    splits_file = cohort_dir / "metadata" / "subject_splits.parquet"
    names = set()
    if splits_file.exists():
        names = set(pq.read_table(splits_file, columns=["split"]).column(0).to_pylist())
    if "train" in names and "tuning" in names:
        return _read(cohort_dir, "meds", "train"), _read(cohort_dir, "meds", "tuning")
    cohort = _read(cohort_dir, "meds", "train" if "train" in names else None)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1). Got {val_fraction}.")
    if val_fraction == 0 or len(cohort) < 2:
        return cohort, None
    train_part, val_part = cohort.split([1 - val_fraction, val_fraction], seed=seed)
    return train_part, (val_part if len(val_part) else None)


@app.command("generate")
def generate(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "--patients",
            help="Synthetic patients to generate (--patients under torchrun, whose "
            "own options --n would abbreviate).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (or .jsonl).")],
    condition: Annotated[
        list[str] | None,
        typer.Option("--condition", help="A baseline feature, NAME=VALUE; repeatable."),
    ] = None,
    temperature: Temperature = 1.0,
    top_k: TopK = None,
    top_p: TopP = None,
    max_visits: MaxVisits = None,
    batch_size: BatchSize = 64,
    seed: Seed = 0,
    fmt: Format = OutputFormat.meds,
    overwrite: Overwrite = False,
) -> None:
    """Generate synthetic patients from scratch, optionally under conditions, with
    any trained model. Their subject ids lie in a reserved range that no real
    patient's id can take. Under `accelerate launch`, the N patients are split over
    the processes (each on its own device, with its own seed derived from --seed),
    and each process writes its MEDS shards into one dataset."""
    from ehrgen.models.registry import load_model

    conditions = _parse_conditions(condition or [])
    model = load_model(model_dir)
    sampling = _sampling(temperature, top_k, top_p, max_visits, batch_size)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _generate_across_processes(
            model, n, conditions, sampling, seed, out, fmt, overwrite
        )
        return
    with _bar("Generating", n) as advance:
        cohort = model.generate(n, conditions, sampling, seed=seed, progress=advance)
    _write(cohort, out, fmt, overwrite)


def _generate_across_processes(
    model, n: int, conditions, sampling, seed: int, out: Path, fmt, overwrite: bool
) -> None:
    """Process r of R generates patients ``n*r//R .. n*(r+1)//R - 1`` (ids and seed
    from r, so the same n, seed and R give the same patients), writes them as a MEDS
    part, and rank 0 merges the parts into ``out``, metadata last."""
    import numpy as np
    from accelerate import PartialState

    from ehrgen.data.formats.meds import write_meds
    from ehrgen.data.formats.meds_writer import merge_meds_parts

    if fmt is not OutputFormat.meds:
        raise ConfigError(
            f"Generation across processes writes MEDS; got --format {fmt.value}. "
            f"Convert the merged dataset with `ehrgen data export` afterwards."
        )
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it.")
    import torch

    # On CPU, Accelerate joins the processes of torchrun only when told it is on CPU.
    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    model.model_.to(state.device)
    start, stop = n * rank // world, n * (rank + 1) // world
    part_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    with _bar(f"Generating (process {rank + 1} of {world})", stop - start) as advance:
        cohort = model.generate(
            stop - start, conditions, sampling, seed=part_seed, progress=advance,
            first_id=start,
        )  # fmt: skip
    parts = [out.parent / f".{out.name}.part-{r}" for r in range(world)]
    write_meds(cohort, parts[rank], overwrite=True)
    state.wait_for_everyone()
    if state.is_main_process:
        merge_meds_parts(parts, out, overwrite=overwrite)
        console.print(
            f"Wrote {n:,} patients from {world} processes to [bold]{out}[/bold]."
        )
    state.wait_for_everyone()


@app.command("impute")
def impute(
    model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")],
    cohort_dir: Annotated[
        Path, typer.Argument(help="A MEDS cohort (partial records).")
    ],
    mode: Annotated[
        str,
        typer.Option(
            "--mode", help="next-visit, modality:NAME (e.g. modality:drug) or complete."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (or .jsonl).")],
    visit: Annotated[
        int | None,
        typer.Option(
            "--visit",
            help="Visit index (0-based; negative from the end). "
            "next-visit: keep visits before it and decode it; default: after "
            "the last.",
        ),
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="MEDS split.")] = None,
    temperature: Temperature = 1.0,
    top_k: TopK = None,
    top_p: TopP = None,
    batch_size: BatchSize = 64,
    seed: Seed = 0,
    fmt: Format = OutputFormat.meds,
    overwrite: Overwrite = False,
) -> None:
    """Fill in partial records: the next visit, a missing modality, or the rest of a
    visit (PromptEHR; the other models refuse, naming what they support)."""
    from ehrgen.models.registry import load_model

    model = load_model(model_dir)
    if not hasattr(model, "continue_patients"):
        raise ConfigError(
            f"{model_dir} holds a {type(model).__name__}, which generates whole "
            f"patients only; imputation needs a PromptEHR model."
        )
    cohort = _read(cohort_dir, "meds", split)
    sampling = _sampling(temperature, top_k, top_p, 20, batch_size)
    with _bar("Imputing", len(cohort)) as advance:
        if mode == "next-visit":
            if visit is not None:
                cohort = _truncate(cohort, visit)
            result = model.continue_patients(cohort, 1, sampling, seed, advance)
        elif mode == "complete":
            result = model.complete_visits(
                cohort, -1 if visit is None else visit, sampling, seed, advance
            )
        elif mode.startswith("modality:"):
            result = model.impute_modality(
                cohort,
                -1 if visit is None else visit,
                mode.split(":", 1)[1],
                sampling,
                seed,
                advance,
            )
        else:
            raise ConfigError(
                f"--mode must be next-visit, modality:NAME or complete. Got {mode!r}."
            )
    _write(result, out, fmt, overwrite)


def _parse_conditions(items: list[str]) -> dict[str, str]:
    conditions = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(
                f"--condition must be NAME=VALUE (e.g. gender=F). Got {item!r}."
            )
        conditions[name.strip()] = value.strip()
    return conditions


def _truncate(cohort: Cohort, visit: int) -> Cohort:
    """Each patient's visits before index ``visit`` (patients without them dropped)."""
    from ehrgen.data import Cohort as CohortType
    from ehrgen.data import Patient

    kept = []
    for p in cohort:
        stop = visit if visit >= 0 else len(p.visits) + visit
        if 0 < stop <= len(p.visits):
            kept.append(Patient(p.patient_id, p.static, p.visits[:stop]))
    if not kept:
        raise ConfigError(f"No patient has visits before index {visit}.")
    return CohortType.from_patients(kept, cohort.schema, metadata=cohort.metadata)


@app.command("benchmark")
def benchmark(
    cohort: Annotated[Path, typer.Argument(help="A MEDS folder, .pkl or .jsonl file.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated registry names.")
    ] = (
        "promptehr,promptehr-one-pass,promptehr-noprompt,lstm-mlp,lstm-medgan,synteg,"
        "gpt2,halo"
    ),
    preset: Annotated[Preset, typer.Option("--preset", help="Model size.")] = (
        Preset.small
    ),
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per model.")] = 10,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget", help="Minutes of training per model (caps --epochs)."
        ),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="train,validation,test fractions.")
    ] = "0.8,0.1,0.1",
    ordered: Annotated[
        bool, typer.Option("--ordered", help="Split in file order, not at random.")
    ] = False,
    batch_size: TrainingBatchSize = 16,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-4,
    seed: Seed = 0,
) -> None:
    """Table 2 of the paper on a cohort: train each model under the same budget and
    score lpl and mpl per modality on the test split."""
    import numpy as np

    from ehrgen.evaluation.benchmark import run_benchmark, table2_markdown
    from ehrgen.training import TrainingConfig

    data = _read(cohort, None)
    fractions = _parse_fractions(split)
    if ordered:
        bounds = np.cumsum([0] + [round(f * len(data)) for f in fractions])
        bounds[-1] = len(data)
        train, val, test = (data[int(a) : int(b)] for a, b in zip(bounds, bounds[1:]))
    else:
        train, val, test = data.split(fractions, seed=seed)
    training = TrainingConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        time_budget_minutes=time_budget,
        checkpoint_every_steps=None,
    )
    names = [m.strip() for m in models.split(",") if m.strip()]
    results = run_benchmark(
        train,
        val if len(val) else None,
        test,
        names,
        training,
        preset.value,
        out,
        progress=True,
    )
    console.print(table2_markdown(results, list(test.schema.modalities)), markup=False)
    console.print(f"Wrote [bold]{out}[/bold]/table2.md, results.json, table2.png.")
