"""One contract for every registered model: PromptEHR and each baseline.

Each model is tested three ways, as synthcity does: built through the registry,
fitted directly, and after a save/load round trip. Per-model test files keep only
what is specific to their model.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ehrgen.data import Cohort, Patient, Visit
from ehrgen.data.demo import demo_cohort
from ehrgen.data.formats.meds import write_meds
from ehrgen.errors import ConfigError, NotFittedError, SchemaError
from ehrgen.evaluation.perplexity import perplexity
from ehrgen.generation import GenerationConfig
from ehrgen.models.folder import MODEL_FILES
from ehrgen.models.registry import MODELS, build_model, load_model
from ehrgen.models.trained import SYNTHETIC_ID_BASE
from ehrgen.training import TrainingConfig

TRAINING = TrainingConfig(
    epochs=3, batch_size=32, learning_rate=5e-3, checkpoint_every_steps=None
)
SHORT = GenerationConfig(max_visits=4, max_codes_per_modality=6, batch_size=16)


@pytest.fixture(scope="module")
def cohorts() -> tuple[Cohort, Cohort]:
    return demo_cohort(150, seed=0), demo_cohort(40, seed=1)


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request, cohorts):
    train, _ = cohorts
    model = build_model(request.param, "tiny")
    assert model.fit(train, None, TRAINING) is model
    return request.param, model


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    name, model = fitted
    return model.save_pretrained(tmp_path_factory.mktemp(name) / "model")


def _true_codes(cohort: Cohort, first_visit: int, vocabulary) -> set:
    rows = set()
    for p, patient in enumerate(cohort):
        for t, visit in enumerate(patient.visits[first_visit:], start=first_visit):
            for m, codes in visit.events.items():
                rows |= {(p, t, m, c) for c in codes if c in vocabulary[m]}
    return rows


def test_scores_are_log_probabilities_of_exactly_the_true_codes(fitted, cohorts):
    """Check, for every protocol a model supports, that its scores are finite
    log-probabilities of exactly the true in-vocabulary codes, and that it beats the
    uniform model (its vocabulary size) on every modality."""
    name, model = fitted
    _, test = cohorts
    vocabulary = {m: set(c) for m, c in model.tokenizer_.codes.items()}
    sizes = {m: len(c) for m, c in vocabulary.items()}
    for protocol in model.protocols:
        for scorer, first in (
            (model.score_longitudinal, 1),
            (model.score_cross_modal, 0),
        ):
            scores = scorer(test, protocol)
            assert scores.protocol == protocol
            log_prob = scores.log_prob
            assert np.isfinite(log_prob).all() and (log_prob <= 1e-6).all()
            names = np.array(scores.modalities, dtype=object)[scores.modality]
            rows = set(
                zip(
                    scores.patient.tolist(),
                    scores.visit.tolist(),
                    names.tolist(),
                    scores.code.tolist(),
                )
            )
            assert rows == _true_codes(test, first, vocabulary)
            assert len(rows) == len(scores)
            if protocol == "set":
                for m, figure in perplexity(scores).modalities.items():
                    assert figure.median < sizes[m], (name, m, figure.median, sizes[m])


def test_scores_of_a_visit_ignore_later_visits(fitted, cohorts):
    """Check that the longitudinal scores of visit t do not change when a later
    visit changes, under every protocol the model supports."""
    _, model = fitted
    _, test = cohorts
    patients = [p for p in test if len(p.visits) >= 3][:6]
    changed = []
    for p in patients:
        codes = tuple(model.tokenizer_.codes["diagnosis"][:3])
        last = Visit({"diagnosis": codes}, p.visits[-1].time)
        changed.append(Patient(p.patient_id, p.static, (*p.visits[:-1], last)))
    before = Cohort.from_patients(patients, test.schema)
    after = Cohort.from_patients(changed, test.schema)
    for protocol in model.protocols:
        a = model.score_longitudinal(before, protocol)
        b = model.score_longitudinal(after, protocol)
        last = np.array([len(p.visits) - 1 for p in patients])
        keep_a, keep_b = a.visit < last[a.patient], b.visit < last[b.patient]
        assert keep_a.sum() > 0
        np.testing.assert_allclose(a.log_prob[keep_a], b.log_prob[keep_b], atol=1e-5)


def test_save_load_keeps_scores_samples_and_state(fitted, saved, cohorts):
    """Check that a folder holds exactly the documented files, that from_pretrained
    and load_model keep scores (within 1e-5), generated patients and training
    facts, and that an existing folder is not overwritten by default."""
    _, model = fitted
    _, test = cohorts
    optional = ["time_values.safetensors"] if model.time_values_ is not None else []
    assert sorted(p.name for p in saved.iterdir()) == sorted(
        [*MODEL_FILES, "model_card.md", *optional]
    )
    info = json.loads((saved / "ehrgen.json").read_text())
    assert info["model"] == model.name and info["format_version"] == 2
    loaded = type(model).from_pretrained(saved)
    assert type(load_model(saved)) is type(model)
    assert loaded.config == model.config and loaded.tokenizer_ == model.tokenizer_
    assert loaded.training_ == model.training_
    assert loaded.training_.train_patients == len(cohorts[0])
    for protocol in model.protocols:
        a = model.score_longitudinal(test, protocol)
        b = loaded.score_longitudinal(test, protocol)
        np.testing.assert_allclose(a.log_prob, b.log_prob, atol=1e-5)
    assert model.generate(12, generation=SHORT, seed=3) == loaded.generate(
        12, generation=SHORT, seed=3
    )
    with pytest.raises(Exception, match="already holds a model"):
        model.save_pretrained(saved)


def _rewrite_json(name: str, change):
    def damage(folder):
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps(change(data)))

    return damage


def _missing(name: str):
    return lambda folder: (folder / name).unlink()


def _corrupt(name: str):
    return lambda folder: (folder / name).write_bytes(b"\x00{not it")


DAMAGES = {
    **{f"missing {f}": _missing(f) for f in MODEL_FILES},
    **{f"corrupt {f}": _corrupt(f) for f in MODEL_FILES},
    "another model": _rewrite_json("ehrgen.json", lambda d: {**d, "model": "other"}),
    "old format": _rewrite_json("ehrgen.json", lambda d: {**d, "format_version": 1}),
    "no population": _rewrite_json(
        "ehrgen.json", lambda d: {k: v for k, v in d.items() if k != "population"}
    ),
    "config typo": _rewrite_json("config.json", lambda d: {**d, "not_a_field": 1}),
}
MESSAGES = {
    "another model": "'other' model",
    "old format": "model format 1",
    "no population": "population",
    "config typo": "config.json",
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_folder_is_refused_naming_the_file(fitted, tmp_path, damage):
    """Check that a folder with a missing, corrupt or foreign file raises a
    SchemaError naming that file."""
    name, model = fitted
    folder = model.save_pretrained(tmp_path / name)
    DAMAGES[damage](folder)
    file = damage.split()[-1] if damage.startswith(("missing", "corrupt")) else ""
    message = MESSAGES.get(damage, file.replace(".", r"\."))
    with pytest.raises(SchemaError, match=message):
        type(model).from_pretrained(folder)


def test_resume_from_a_checkpoint_ends_like_one_run(fitted, tmp_path):
    """Check that every checkpoint is a loadable model and that resuming from one
    ends with the steps and weights of one uninterrupted run."""
    name, _ = fitted
    train = demo_cohort(24, seed=4)
    settings = TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3)
    whole = build_model(name, "tiny").fit(train, training=settings)
    build_model(name, "tiny").fit(
        train,
        training=settings.replace(max_steps=3, checkpoint_every_steps=3),
        output_dir=tmp_path,
    )
    checkpoint = tmp_path / "checkpoints" / f"step-{3:07d}"
    assert len(load_model(checkpoint).generate(2, generation=SHORT, seed=0)) == 2
    resumed = build_model(name, "tiny").fit(
        train, training=settings, resume_from=checkpoint
    )
    assert resumed.training_.steps == whole.training_.steps
    for key, value in whole.model_.state_dict().items():
        torch.testing.assert_close(resumed.model_.state_dict()[key], value)


def test_a_seed_fixes_generation(fitted):
    """Check that the same seed gives the same patients and another seed others."""
    _, model = fitted
    first = model.generate(10, generation=SHORT, seed=5)
    assert first == model.generate(10, generation=SHORT, seed=5)
    assert first != model.generate(10, generation=SHORT, seed=6)
    assert all(1 <= len(p.visits) <= SHORT.max_visits for p in first)


def test_synthetic_subject_ids_never_equal_real_ones(fitted, cohorts, tmp_path):
    """Check that synthetic patients written as MEDS get subject ids in the reserved
    range, disjoint from the training cohort's, and that the range is recorded."""
    _, model = fitted
    train, _ = cohorts
    synthetic = model.generate(30, generation=SHORT, seed=0)
    real_ids = pq.read_table(
        write_meds(train, tmp_path / "real") / "metadata" / "subject_splits.parquet"
    ).column("subject_id")
    root = write_meds(synthetic, tmp_path / "synthetic")
    ids = pq.read_table(root / "metadata" / "subject_splits.parquet")["subject_id"]
    assert set(ids.to_pylist()).isdisjoint(real_ids.to_pylist())
    assert min(ids.to_pylist()) >= SYNTHETIC_ID_BASE
    recorded = json.loads((root / "metadata" / "ehrgen.json").read_text())["metadata"]
    assert recorded["synthetic_subject_ids"] == [
        SYNTHETIC_ID_BASE,
        SYNTHETIC_ID_BASE + 30,
    ]


def test_unfitted_models_refuse_work(cohorts, tmp_path):
    """Check that every model raises NotFittedError before fit, naming the fix."""
    _, test = cohorts
    calls = [
        lambda model: model.score_longitudinal(test, "set"),
        lambda model: model.score_cross_modal(test, "set"),
        lambda model: model.generate(2, seed=0),
        lambda model: model.save_pretrained(tmp_path / "model"),
        lambda model: model.model_,
    ]
    for name in MODELS:
        for call in calls:
            with pytest.raises(NotFittedError, match="from_pretrained"):
                call(build_model(name, "tiny"))
    with pytest.raises(ConfigError, match="known models are"):
        build_model("other")


def test_a_training_cohort_with_a_reserved_id_is_refused():
    """Check that a real patient id in the synthetic range is refused at fit."""
    cohort = demo_cohort(4, seed=0)
    patients = list(cohort)
    patients[1] = Patient(
        str(SYNTHETIC_ID_BASE + 7), patients[1].static, patients[1].visits
    )
    cohort = Cohort.from_patients(patients, cohort.schema)
    for name in MODELS:
        with pytest.raises(SchemaError, match="reserved for synthetic patients"):
            build_model(name, "tiny").fit(cohort, training=TrainingConfig(epochs=1))


def test_generated_patients_get_gaps_and_lab_values(fitted):
    """Check that every model's generated patients carry the gaps and lab values
    of its model of gaps and values: values on its labs only, times strictly
    increasing within each patient."""
    _, model = fitted
    assert model.time_values_ is not None
    labs = {code for _, code in model.time_values_.labs}
    cohort = model.generate(40, seed=1)
    measured = np.isfinite(cohort.event_values)
    assert measured.any()
    assert set(cohort.code_values[cohort.event_codes[measured]]) <= labs
    same_patient = np.diff(cohort.visit_patient) == 0
    assert np.all(np.diff(cohort.visit_times)[same_patient] > np.timedelta64(0))
