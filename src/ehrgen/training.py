"""One trainer for every neural model: Accelerate, checkpoints, explicit resume.

The same loop runs on one CPU process, one GPU, or several processes launched with
``accelerate launch`` (DDP; mixed precision on GPU). It is a plain loop: AdamW, linear
warm-up then linear decay, gradient clipping, validation perplexity after each
evaluation interval, the best weights kept, early stopping, a checkpoint every N steps.

A checkpoint is a folder written atomically: the model's own files (written by the
``save_model`` callback, e.g. ``save_pretrained``), ``optimizer.safetensors`` (the
optimizer's tensors), ``rng.safetensors`` and ``trainer_state.json`` (counters, learning
rate schedule, optimizer hyper-parameters, best validation perplexity). Nothing is
pickled. Resuming is explicit (``resume_from=``), never guessed from a folder.

With ``TrainingConfig.dp`` set, a step is DP-SGD over patients instead
(:mod:`ehrgen.privacy.sgd`): the loader is a
:class:`~ehrgen.privacy.sgd.PatientBatches`, each step's patients are Poisson
sampled, each patient's gradient is clipped and the sum noised, the accountant's
state is kept in checkpoints, a run stops before it would pass its budget, and no
validation patients are read (they are private too): the last weights are kept.

A model whose ``select_by_validation`` attribute is False (the GANs, whose
validation loss says little about sample quality) is validated and the figure
logged, but the last weights are kept and it never stops early.

The model is any ``nn.Module`` whose ``forward(batch)`` returns an object with
``loss_sum`` (summed negative log-likelihood) and ``n_tokens``. The loss optimised is
``loss_sum / n_tokens``, or ``loss_sum / loss_denominator`` when the output has one: a
batch of whole patients, grouped by length, holds a number of tokens that varies with
the patients' lengths, and dividing by it would weigh a short patient's tokens (and
its end) more than a long one's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ehrgen._config import ConfigMixin, check, check_positive_ints
from ehrgen._io import atomic_directory
from ehrgen.errors import ConfigError, SchemaError
from ehrgen.models.time_values.config import TimeValueConfig
from ehrgen.privacy.config import DPConfig

__all__ = ["Trainer", "TrainingConfig", "TrainingResult"]

logger = logging.getLogger(__name__)

_PRECISIONS = ("no", "fp16", "bf16")
TRAINER_STATE = "trainer_state.json"


@dataclass(frozen=True, kw_only=True)
class TrainingConfig(ConfigMixin):
    """How to train (the architecture lives in the model's own config).

    The paper used Adam, lr 1e-5, weight decay 1e-4, batch 16, 50 epochs with 3
    warm-up epochs, fine-tuning a pretrained BART; models trained from scratch, as
    ours are, need a larger learning rate.
    """

    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    # Training targets per step; a model whose items hold several targets (the
    # one-pass PromptEHR: a patient, one target per visit) fills a step with whole
    # items up to about this many targets.
    batch_size: int = 16
    epochs: int = 20
    # Linear warm-up length, in epochs (fractions allowed).
    warmup_epochs: float = 1.0
    max_grad_norm: float = 1.0
    # Validate every this many epochs; patience counts validations without progress.
    eval_every_epochs: int = 1
    patience: int | None = 3
    checkpoint_every_steps: int | None = 500
    keep_checkpoints: int = 2
    # Stop after this many optimizer steps (None: run all epochs).
    max_steps: int | None = None
    # Stop after this many minutes of training (None: no limit); for equal budgets.
    time_budget_minutes: float | None = None
    seed: int = 0
    # "no", "fp16" or "bf16"; used on GPU only (ignored with a warning on CPU).
    mixed_precision: str = "no"
    num_workers: int = 0
    # Differentially private training (DP-SGD over patients); None: ordinary.
    dp: DPConfig | None = None
    # The model of visit gaps and lab values trained beside the generator
    # (ehrgen.models.time_values); None: none (gaps from the population's
    # quantiles, no values). Never trained under dp: it would spend no budget.
    time_values: TimeValueConfig | None = field(default_factory=TimeValueConfig)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if isinstance(self.dp, Mapping):  # read back from JSON
            object.__setattr__(self, "dp", DPConfig.from_dict(self.dp))
        ok = self.dp is None or isinstance(self.dp, DPConfig)
        check(ok, name, "dp", "a DPConfig or None", self.dp)
        if isinstance(self.time_values, Mapping):
            object.__setattr__(
                self, "time_values", TimeValueConfig.from_dict(self.time_values)
            )
        ok = self.time_values is None or isinstance(self.time_values, TimeValueConfig)
        check(ok, name, "time_values", "a TimeValueConfig or None", self.time_values)
        check(
            self.learning_rate > 0,
            name,
            "learning_rate",
            "positive",
            self.learning_rate,
        )
        check(self.weight_decay >= 0, name, "weight_decay", ">= 0", self.weight_decay)
        check_positive_ints(
            self, "batch_size", "epochs", "eval_every_epochs", "keep_checkpoints"
        )
        check(
            self.warmup_epochs >= 0, name, "warmup_epochs", ">= 0", self.warmup_epochs
        )
        check(
            self.max_grad_norm > 0,
            name,
            "max_grad_norm",
            "positive",
            self.max_grad_norm,
        )
        for field_name in ("patience", "checkpoint_every_steps", "max_steps"):
            value = getattr(self, field_name)
            ok = value is None or (isinstance(value, int) and value > 0)
            check(ok, name, field_name, "a positive int or None", value)
        check(
            self.mixed_precision in _PRECISIONS,
            name,
            "mixed_precision",
            f"one of {list(_PRECISIONS)}",
            self.mixed_precision,
        )
        check(self.num_workers >= 0, name, "num_workers", ">= 0", self.num_workers)
        budget = self.time_budget_minutes
        ok = budget is None or budget > 0
        check(ok, name, "time_budget_minutes", "positive or None", budget)


@dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` reports."""

    steps: int
    epochs_completed: int
    best_val_perplexity: float | None
    best_epoch: int | None
    train_tokens: int
    seconds: float
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    # DP training: the DP-SGD part of the privacy statement (ehrgen.privacy).
    privacy: Any = None
    # DP training: the run stopped because one more step would pass its budget.
    stopped_by_budget: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_dict()
        return out


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0
    train_tokens: int = 0


class Trainer:
    """Train a model with Accelerate; see the module docstring.

    Args:
        config: the training settings.
        output_dir: where checkpoints (``checkpoints/step-N``), the best weights
            (``best/``) and ``metrics.jsonl`` go.
        save_model: writes the model's own files into a folder (a checkpoint or
            ``best/``).
        load_weights: loads a saved folder's weights into the model.
        progress: show a progress bar (main process only).
    """

    def __init__(
        self,
        config: TrainingConfig,
        output_dir: str | Path,
        save_model: Callable[[nn.Module, Path], None],
        load_weights: Callable[[nn.Module, Path], None],
        progress: bool = False,
    ) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.save_model = save_model
        self.load_weights = load_weights
        self.progress = progress

    def fit(
        self,
        model: nn.Module,
        train_loader: Callable[[int], Iterable[Mapping[str, torch.Tensor]]],
        val_loader: Iterable[Mapping[str, torch.Tensor]] | None,
        resume_from: str | Path | None = None,
        dp_budget: Any = None,
    ) -> TrainingResult:
        """Train; ``train_loader(epoch)`` gives that epoch's batches (a DataLoader;
        an epoch ends when its loader does, and the first epoch's length sets the
        learning-rate schedule, so lengths that vary a little by epoch, as budgeted
        batches do, are fine). At the end the model holds the best weights
        (by validation perplexity) when validation ran, else the last ones.

        With ``config.dp``, ``train_loader`` is a
        :class:`~ehrgen.privacy.sgd.PatientBatches` and ``dp_budget`` the
        :class:`~ehrgen.privacy.statement.Budget` of DP-SGD; ``val_loader`` is
        not read."""
        from accelerate import Accelerator

        accelerator = Accelerator(
            mixed_precision=self._precision(),
            step_scheduler_with_optimizer=False,
            # On CPU, Accelerate joins torchrun's processes only when told so.
            cpu=not torch.cuda.is_available(),
        )
        if self.config.dp is not None:
            steps_per_epoch = self._check_dp(accelerator, train_loader, dp_budget)
            if val_loader is not None:
                logger.info(
                    "DP training reads no validation patients (they are private "
                    "too): the last weights are kept, and it never stops early."
                )
                val_loader = None
        else:
            # Batches per process: Accelerate shards each epoch's loader.
            steps_per_epoch = len(accelerator.prepare_data_loader(train_loader(0)))
        total_steps = self.config.epochs * steps_per_epoch
        if self.config.max_steps is not None:
            total_steps = min(total_steps, self.config.max_steps)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        scheduler = _warmup_then_linear(
            optimizer,
            warmup=round(self.config.warmup_epochs * steps_per_epoch),
            total=self.config.epochs * steps_per_epoch,
        )
        state, dp_state = _State(), None
        if resume_from is not None:
            state, dp_state = self._resume(
                Path(resume_from), model, optimizer, scheduler
            )
        dp = None
        if self.config.dp is not None:
            from ehrgen.privacy.sgd import DPSGD

            dp = DPSGD(
                self.config.dp,
                dp_budget,
                train_loader.n_patients,
                total_steps,
                state=dp_state,
            )
        model, optimizer = accelerator.prepare(model, optimizer)
        run = _Run(self, accelerator, model, optimizer, scheduler, state, total_steps)
        run.dp = dp
        return run.loop(train_loader, val_loader)

    def _check_dp(self, accelerator, train_loader, budget) -> int:
        """DP training's preconditions; its steps per epoch (1/q)."""
        from ehrgen.privacy.sgd import DPSGD, PatientBatches

        if accelerator.num_processes > 1:
            raise ConfigError(
                "DP training runs in one process: each step's noise is drawn once, "
                "and per-patient gradients are not split across processes. Launch "
                "it without `accelerate launch`."
            )
        if not isinstance(train_loader, PatientBatches) or budget is None:
            raise ConfigError(
                "TrainingConfig.dp needs a PatientBatches loader and a DP-SGD "
                "budget; train through a model's fit(), which makes them."
            )
        return DPSGD.steps_per_epoch(self.config.dp, train_loader.n_patients)

    def _precision(self) -> str:
        if self.config.mixed_precision != "no" and not torch.cuda.is_available():
            logger.warning(
                "mixed_precision=%r needs a GPU; training in full precision.",
                self.config.mixed_precision,
            )
            return "no"
        return self.config.mixed_precision

    # ---- checkpoints

    def checkpoint(
        self,
        model: nn.Module,
        optimizer,
        scheduler,
        state: _State,
        folder: Path,
        dp: Any = None,
    ) -> Path:
        """Write a complete, resumable checkpoint folder atomically."""
        with atomic_directory(folder, overwrite=True) as tmp:
            self.save_model(model, tmp)
            tensors, hyper = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
            payload = {
                "state": state.__dict__,
                "scheduler": scheduler.state_dict(),
                "optimizer": hyper,
                "training": self.config.to_dict(),
                "dp": None if dp is None else dp.state(),
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(payload, indent=2))
        return folder

    def _resume(
        self, folder: Path, model, optimizer, scheduler
    ) -> tuple[_State, dict[str, Any] | None]:
        for name in (TRAINER_STATE, "optimizer.safetensors", "rng.safetensors"):
            if not (folder / name).exists():
                raise SchemaError(
                    f"{folder}: not a resumable checkpoint ({name} is missing); pass a "
                    f"checkpoints/step-N folder written by a previous run."
                )
        try:
            payload = json.loads((folder / TRAINER_STATE).read_text())
            tensors = load_file(str(folder / "optimizer.safetensors"))
            rng = load_file(str(folder / "rng.safetensors"))["torch"]
        except (OSError, ValueError, KeyError) as error:
            raise SchemaError(f"{folder}: unreadable checkpoint ({error}).") from None
        self.load_weights(model, folder)
        optimizer.load_state_dict(_unflatten_optimizer(tensors, payload["optimizer"]))
        scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(rng)
        dp_state = payload.get("dp")
        if (dp_state is None) != (self.config.dp is None):
            kind = "with" if dp_state is not None else "without"
            raise ConfigError(
                f"{folder}: this checkpoint was trained {kind} differential privacy; "
                f"resume it with the same setting (a DP run cannot continue without "
                f"its accountant, nor an ordinary run become DP midway)."
            )
        logger.info("Resumed from %s at step %d.", folder, payload["state"]["step"])
        return _State(**payload["state"]), dp_state


class _Run:
    """One training run's loop and bookkeeping."""

    def __init__(self, trainer, accelerator, model, optimizer, scheduler, state, total):
        self.trainer, self.config = trainer, trainer.config
        self.accelerator = accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.state, self.total_steps = state, total
        self._saved_step: int | None = None  # the step of the last checkpoint
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.stopped_early = False
        self.dp: Any = None  # a DPSGD when training is differentially private
        self.out_of_budget = False

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def loop(self, train_loader, val_loader) -> TrainingResult:
        with _progress(self.trainer.progress and self.main, self.total_steps) as bar:
            bar.update(completed=self.state.step)
            while self.state.epoch < self.config.epochs and not self._done():
                if not self._train_epoch(train_loader, bar):
                    break  # stopped in the middle of an epoch (max_steps, time)
                if self.state.epoch + 1 == self.config.epochs:
                    self._checkpoint()  # the end of the run, as a stop inside it
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                if (
                    val_loader is not None
                    and self.state.epoch % self.config.eval_every_epochs == 0
                ):
                    self._validate(val_loader, bar)
                    if self.stopped_early:
                        break
            if val_loader is not None and self.state.step_in_epoch > 0:
                # Stopped inside an epoch (max_steps, time budget): the weights
                # reached there still compete for best, and a run that never
                # finished an epoch still gets a validation figure.
                self._validate(val_loader, bar)
        return self._finish(val_loader is not None)

    def _done(self) -> bool:
        budget = self.config.time_budget_minutes
        out_of_time = budget is not None and (
            time.perf_counter() - self.started > 60 * budget
        )
        # The epochs are counted by the loop: the number of batches of an epoch may
        # vary, so a step count only stops a run when max_steps asks for it.
        max_steps = self.config.max_steps
        out_of_steps = max_steps is not None and self.state.step >= max_steps
        return out_of_steps or self.stopped_early or out_of_time or self.out_of_budget

    def _train_epoch(self, train_loader, bar) -> bool:
        """One epoch, or what is left of it; False if the run stopped inside it."""
        if self.dp is not None:
            return self._train_private_epoch(train_loader, bar)
        loader = self.accelerator.prepare_data_loader(train_loader(self.state.epoch))
        if self.state.step_in_epoch:
            loader = self.accelerator.skip_first_batches(
                loader, self.state.step_in_epoch
            )
        self.model.train()
        window_tokens, window_start = 0, time.perf_counter()
        for batch in loader:
            out = self.model(batch)
            denominator = getattr(out, "loss_denominator", None)
            if denominator is None:
                denominator = out.n_tokens.clamp(min=1)
            loss = out.loss_sum / denominator
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(
                self.model.parameters(), self.config.max_grad_norm
            )
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            tokens = int(self.accelerator.gather(out.n_tokens.detach()).sum())
            self.state.step += 1
            self.state.step_in_epoch += 1
            self.state.train_tokens += tokens
            window_tokens += tokens
            rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            self._log(
                {
                    "step": self.state.step,
                    "epoch": self.state.epoch,
                    "loss": float(loss.detach()),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": rate,
                },
                quiet=True,
            )
            bar.update(advance=1, loss=float(loss.detach()), rate=rate)
            if self._after_step():
                return False
        return True

    def _after_step(self) -> bool:
        """Checkpoint when due; True when the run stops here."""
        every = self.config.checkpoint_every_steps
        if (every and self.state.step % every == 0) or self._done():
            self._checkpoint()
        return self._done()

    def _train_private_epoch(self, patients, bar) -> bool:
        """One epoch of DP-SGD: 1/q steps of Poisson-sampled patients. The training
        loss and token rate are shown on the bar but not logged to metrics.jsonl:
        they are statistics of the private patients, released by no mechanism."""
        device, epoch = self.accelerator.device, self.state.epoch
        steps = self.dp.steps_per_epoch(self.config.dp, patients.n_patients)

        def batch_of(patient: int):
            return {k: v.to(device) for k, v in patients.batch(patient, epoch).items()}

        self.model.train()
        window_tokens, window_start = 0, time.perf_counter()
        for _ in range(self.state.step_in_epoch, steps):
            if not self.dp.within_budget():
                logger.warning(
                    "Stopping at step %d: one more DP-SGD step would spend more "
                    "than its ε = %.4g.",
                    self.state.step,
                    self.dp.budget.epsilon,
                )
                self.out_of_budget = True
                self._checkpoint()
                return False
            members = self.dp.sample()
            loss_sum, tokens = self.dp.gradients(self.model, members, batch_of)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            self.state.step_in_epoch += 1
            self.state.train_tokens += tokens
            window_tokens += tokens
            rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            self._log(
                {
                    "step": self.state.step,
                    "epoch": epoch,
                    "lr": self.scheduler.get_last_lr()[0],
                },
                quiet=True,
            )
            bar.update(advance=1, loss=loss_sum / max(tokens, 1), rate=rate)
            if self._after_step():
                return False
        self._log({"step": self.state.step, "epoch": epoch + 1,
                   "epsilon": self.dp.epsilon()})  # fmt: skip
        return True

    @torch.no_grad()
    def _validate(self, val_loader, bar) -> None:
        # Every process scores the whole validation set: exact (no padded shards) and
        # no collective needed; validation sets are small next to training.
        self.model.eval()
        device = self.accelerator.device
        loss, tokens = 0.0, 0
        for batch in val_loader:
            out = self.model({k: v.to(device) for k, v in batch.items()})
            loss += float(out.loss_sum)
            tokens += int(out.n_tokens)
        perplexity = math.exp(loss / max(tokens, 1))
        state = self.state
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not getattr(unwrapped, "select_by_validation", True):
            # The model opts out (a GAN): the figure is logged, but it neither picks
            # the weights kept nor stops training early.
            self._log({"step": state.step, "epoch": state.epoch,
                       "val_perplexity": perplexity})  # fmt: skip
            bar.update(val=perplexity)
            self.model.train()
            return
        improved = state.best_val is None or perplexity < state.best_val
        if improved:
            state.best_val, state.best_epoch, state.bad_evals = (
                perplexity,
                state.epoch,
                0,
            )
            if self.main:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with atomic_directory(
                    self.trainer.output_dir / "best", overwrite=True
                ) as tmp:
                    self.trainer.save_model(unwrapped, tmp)
        else:
            state.bad_evals += 1
            patience = self.config.patience
            self.stopped_early = patience is not None and state.bad_evals >= patience
        self.accelerator.wait_for_everyone()
        self._log(
            {
                "step": state.step,
                "epoch": state.epoch,
                "val_perplexity": perplexity,
                "best_val_perplexity": state.best_val,
            }
        )
        bar.update(val=perplexity)
        self.model.train()

    def _checkpoint(self) -> None:
        if self._saved_step == self.state.step:
            return
        self._saved_step = self.state.step
        if self.main:
            folder = (
                self.trainer.output_dir / "checkpoints" / f"step-{self.state.step:07d}"
            )
            model = self.accelerator.unwrap_model(self.model)
            self.trainer.checkpoint(
                model, self.optimizer, self.scheduler, self.state, folder, self.dp
            )
            _prune(folder.parent, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _log(self, record: dict[str, Any], quiet: bool = False) -> None:
        if not quiet:
            self.history.append(record)
        if self.main:
            self.trainer.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.trainer.output_dir / "metrics.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")

    def _finish(self, validated: bool) -> TrainingResult:
        model = self.accelerator.unwrap_model(self.model)
        best = self.trainer.output_dir / "best"
        self.accelerator.wait_for_everyone()
        if validated and best.exists():
            self.trainer.load_weights(model, best)
        model.eval()
        return TrainingResult(
            steps=self.state.step,
            epochs_completed=self.state.epoch,
            best_val_perplexity=self.state.best_val,
            best_epoch=self.state.best_epoch,
            train_tokens=self.state.train_tokens,
            seconds=time.perf_counter() - self.started,
            stopped_early=self.stopped_early,
            history=self.history,
            privacy=None if self.dp is None else self.dp.part(),
            stopped_by_budget=self.out_of_budget,
        )


# --------------------------------------------------------------------------- helpers


def _warmup_then_linear(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _flatten_optimizer(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], Any]:
    """Optimizer state as safetensors-ready tensors plus JSON hyper-parameters."""
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(
    tensors: dict[str, torch.Tensor], hyper: Any
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *hyper["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": hyper["param_groups"]}


def _prune(folder: Path, keep: int) -> None:
    import shutil

    checkpoints = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in checkpoints[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


class _NoBar:
    def update(self, **_: Any) -> None:
        pass


class _progress:
    """A rich progress bar with loss, validation perplexity and tokens/s, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return _NoBar()
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("training"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("val ppl {task.fields[val]:.2f}"),
            TextColumn("{task.fields[rate]:,.0f} tok/s"),
            TimeRemainingColumn(),
        )
        self.progress.start()
        task = self.progress.add_task(
            "train", total=self.total, loss=float("nan"), val=float("nan"), rate=0.0
        )

        class Bar:
            def update(bar, **fields: Any) -> None:
                self.progress.update(task, **fields)

        return Bar()

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.stop()
