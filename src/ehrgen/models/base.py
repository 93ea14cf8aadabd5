"""The interface every generator implements, and the scores they return.

Evaluation never knows which model it scores: PromptEHR and each baseline implement
:class:`Generator`, and return :class:`CodeScores`, one row per scored true code.

Two scoring protocols exist, because models of different families give code
probabilities differently (``ehrgen.evaluation.perplexity`` defines both):

* ``"chain"``: the codes of the target modality are fed in their recorded order with
  teacher forcing; each is scored given the context and the codes before it, under the
  distribution restricted to that modality (autoregressive models);
* ``"set"``: each true code is scored under one categorical distribution over the
  modality's codes for the target slot (any model family).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ehrgen.data import Cohort
from ehrgen.errors import NotFittedError, SchemaError

__all__ = [
    "PROTOCOLS",
    "TASKS",
    "CodeScores",
    "FittedState",
    "Generator",
    "check_model_folder_free",
    "length_calibration",
    "load_weights",
]

PROTOCOLS = ("chain", "set")
TASKS = ("longitudinal", "cross_modal")


@dataclass(frozen=True)
class CodeScores:
    """Log-probabilities of true codes, one row per (patient, visit, modality, code).

    Attributes:
        patient: (N,) index of the patient in the scored cohort.
        visit: (N,) index of the visit within its patient.
        modality: (N,) index into ``modalities``.
        code: (N,) the code strings.
        log_prob: (N,) natural log-probability of the code (finite).
        modalities: the modality names.
        protocol: ``"chain"`` or ``"set"``.
        task: ``"longitudinal"`` (given visits 1..t-1) or ``"cross_modal"`` (given
            visits 1..t-1 and the other modalities of visit t).
        model: the name of the model that scored.
        n_out_of_vocabulary: true codes the model could not score (unseen in training);
            they are left out of the rows and reported here.
        mc_samples: for a Monte Carlo estimate (a GAN's set score, see
            ``docs/evaluation.md``), the K noise draws averaged; None for an exact
            score.
    """

    patient: np.ndarray
    visit: np.ndarray
    modality: np.ndarray
    code: np.ndarray
    log_prob: np.ndarray
    modalities: tuple[str, ...]
    protocol: str
    task: str
    model: str = ""
    n_out_of_vocabulary: int = 0
    mc_samples: int | None = None

    def __post_init__(self) -> None:
        n = len(self.log_prob)
        for name in ("patient", "visit", "modality", "code"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"CodeScores.{name} has {len(getattr(self, name))} "
                    f"rows; log_prob has {n}."
                )
        if self.protocol not in PROTOCOLS or self.task not in TASKS:
            raise ValueError(
                f"CodeScores protocol must be one of {PROTOCOLS} and task one of "
                f"{TASKS}. Got {self.protocol!r}, {self.task!r}."
            )

    def __len__(self) -> int:
        return len(self.log_prob)

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[int, int, int, str, float]],
        modalities: Sequence[str],
        protocol: str,
        task: str,
        model: str = "",
        n_out_of_vocabulary: int = 0,
    ) -> CodeScores:
        """Build from ``(patient, visit, modality, code, log_prob)`` tuples."""
        columns = list(zip(*rows)) if rows else [[]] * 5
        return cls(
            patient=np.asarray(columns[0], dtype=np.int64),
            visit=np.asarray(columns[1], dtype=np.int32),
            modality=np.asarray(columns[2], dtype=np.int8),
            code=np.asarray(columns[3], dtype=object),
            log_prob=np.asarray(columns[4], dtype=np.float64),
            modalities=tuple(modalities),
            protocol=protocol,
            task=task,
            model=model,
            n_out_of_vocabulary=n_out_of_vocabulary,
        )

    def to_arrow(self):
        """The rows as a :class:`pyarrow.Table` (modality as its name)."""
        import pyarrow as pa

        names = np.array(self.modalities, dtype=object)
        return pa.table(
            {
                "patient": self.patient,
                "visit": self.visit,
                "modality": pa.array(names[self.modality].tolist(), pa.string()),
                "code": pa.array(self.code.tolist(), pa.string()),
                "log_prob": self.log_prob,
            }
        )


@runtime_checkable
class Generator(Protocol):
    """What PromptEHR and every baseline implement (see DESIGN.md)."""

    #: the scoring protocols the model supports, a subset of :data:`PROTOCOLS`.
    protocols: tuple[str, ...]

    def fit(
        self, train: Cohort, val: Cohort | None = None, *args: Any, **kwargs: Any
    ) -> Generator: ...

    def score_longitudinal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Each true code of visit t >= 2 given visits 1..t-1 and static features."""
        ...

    def score_cross_modal(self, cohort: Cohort, protocol: str = "set") -> CodeScores:
        """Each true code of visit t given visits 1..t-1 and visit t's other
        modalities."""
        ...

    def generate(
        self,
        n: int,
        conditions: Mapping[str, Any] | None = None,
        generation: Any = None,
        seed: int | None = None,
    ) -> Cohort: ...

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path: ...

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> Generator: ...


class FittedState:
    """The scikit-learn-style access to learned state that every model shares.

    A model keeps what ``fit`` (or ``from_pretrained``) learned in ``self._fitted``
    (None before): a :class:`ehrgen.models.folder.Fitted`.
    """

    _fitted: Any = None

    def _check_fitted(self) -> Any:
        if self._fitted is None:
            name = type(self).__name__
            raise NotFittedError(
                f"This {name} instance is not fitted yet. Call 'fit' with a cohort, "
                f"or load a trained model with {name}.from_pretrained(path)."
            )
        return self._fitted

    @property
    def tokenizer_(self) -> Any:
        """The code vocabulary learned from the training cohort."""
        return self._check_fitted().tokenizer


def length_calibration(model: Any) -> dict[str, Any] | None:
    """How the model's number of visits per patient was calibrated, or None.

    A calibrated model (see ``PromptEHR.calibrate_length``) was tuned so that its
    visits per patient follow a cohort (usually the training cohort); figures that
    compare visit counts with that cohort must say so.

    Returns:
        None for an uncalibrated model, else ``{"cohort": str, "n_patients": int}``.
    """
    fitted = getattr(model, "_fitted", None)
    calibration = getattr(fitted, "length_calibration", None)
    if calibration is None:
        return None
    return {"cohort": calibration.cohort, "n_patients": calibration.n_patients}


def check_model_folder_free(path: Path, overwrite: bool) -> None:
    """Refuse to write a model over one already there, unless asked to."""
    if (path / "ehrgen.json").exists() and not overwrite:
        from ehrgen._io import OutputExistsError

        raise OutputExistsError(
            f"{path} already holds a model; pass overwrite=True (--overwrite) to "
            f"replace it."
        )


def load_weights(module: Any, folder: Path, name: str = "model.safetensors") -> None:
    """Load ``folder/name`` into ``module``, naming the file on failure."""
    from safetensors.torch import load_model

    file = Path(folder) / name
    try:
        load_model(module, str(file))
    except Exception as error:  # safetensors raises several types; name the file
        raise SchemaError(f"{file}: cannot load the weights ({error}).") from None
