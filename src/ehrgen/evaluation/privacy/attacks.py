"""The privacy attacks, one function each; :mod:`ehrgen.evaluation.privacy` runs them.

Every attack sees the training cohort D1 (members), a held-out real cohort D2
(non-members) and a synthetic cohort DS, through :class:`PrivacyData`, and returns an
:class:`~ehrgen.evaluation.privacy.AttackResult` whose figures carry bootstrap 95%
intervals. Patients are compared as code sets (see
:mod:`ehrgen.evaluation.privacy.code_sets`). The white-box attack
(:func:`likelihood_membership`) sees the model, D1 and D2 but no synthetic patient, so
one run serves every generation mode.

Where the paper's protocol lets an attacker grade itself on the data it trained on
(the shadow-model attack trains on D2 and is evaluated on D2), D2 is split in two: one
half trains the attacker, the other evaluates it. Otherwise an attacker that merely
memorised its own training rows would score above 0.5 against any generator.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from ehrgen.data import Cohort
from ehrgen.evaluation.privacy._stats import (
    AttackResult,
    Curve,
    bootstrap,
    membership_figures,
    roc,
)
from ehrgen.evaluation.privacy.code_sets import (
    CodeIndex,
    nearest_distances,
    nearest_neighbours,
    patient_sets,
    sequence_keys,
)

__all__ = [
    "PrivacyData",
    "attribute_inference",
    "copies",
    "distance_membership",
    "likelihood_membership",
    "nearest_neighbour_adversarial_accuracy",
    "rare_code_inference",
    "shadow_membership",
]


@dataclass
class PrivacyData:
    """D1, D2 and DS with their code sets in one shared :class:`CodeIndex`."""

    train: Cohort
    holdout: Cohort
    synthetic: Cohort
    index: CodeIndex
    sets: dict[str, sparse.csr_matrix]
    visit_sets: dict[str, sparse.csr_matrix]

    @classmethod
    def of(cls, train: Cohort, holdout: Cohort, synthetic: Cohort) -> PrivacyData:
        cohorts = {"train": train, "holdout": holdout, "synthetic": synthetic}
        index = CodeIndex.of(*cohorts.values())
        return cls(
            train,
            holdout,
            synthetic,
            index,
            {k: patient_sets(c, index) for k, c in cohorts.items()},
            {k: patient_sets(c, index, visit_aware=True) for k, c in cohorts.items()},
        )


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` distinct indices below ``n`` (all of them, shuffled, if fewer)."""
    return rng.permutation(n)[: min(n, size)]


# ---------------------------------------------------------------- membership


def distance_membership(
    data: PrivacyData, rng: np.random.Generator, n_resamples: int
) -> AttackResult:
    """Membership by distance: the closer a candidate is to its nearest synthetic
    patient, the likelier it was trained on. Candidates: all of D2 and as many
    patients of D1; both the code-set and the visit-aware Jaccard distance."""
    n = min(len(data.train), len(data.holdout))
    members, nonmembers = _sample(rng, len(data.train), n), _sample(rng, n, n)
    figures, curves = {}, []
    for view, sets in (("code_set", data.sets), ("visit_aware", data.visit_sets)):
        d_members, _ = nearest_distances(sets["train"][members], sets["synthetic"])
        d_nonmembers, _ = nearest_distances(
            sets["holdout"][nonmembers], sets["synthetic"]
        )
        estimates, curve = membership_figures(
            -d_members, -d_nonmembers, rng, n_resamples, f"distance ({view})"
        )
        figures.update({f"{view}_{k}": v for k, v in estimates.items()})
        curves.append(curve)
    return AttackResult(
        "distance_membership",
        "Membership inference by the Jaccard distance of each candidate to its "
        "nearest synthetic patient (closer: called a member).",
        figures,
        tuple(curves),
        {"members": n, "nonmembers": n},
    )


def shadow_membership(
    data: PrivacyData,
    rng: np.random.Generator,
    n_resamples: int,
    *,
    shadow_epochs: int,
    shadow_hidden: int,
    seed: int,
) -> AttackResult:
    """The paper's shadow-model attack (METHOD.md): an LSTM+MLP shadow model trained
    on DS; a 3-layer MLP attacker learns to tell the shadow's perplexities on a subset
    of DS (its members) from those on half of D2; it is evaluated on D1 against the
    other half of D2."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    shadow = _fit_shadow(data.synthetic, shadow_epochs, shadow_hidden, seed)
    order = rng.permutation(len(data.holdout))
    attack_half, eval_half = np.sort(order[::2]), np.sort(order[1::2])
    shadow_members = _sample(rng, len(data.synthetic), len(attack_half))
    eval_members = _sample(rng, len(data.train), len(eval_half))
    known = np.asarray(data.sets["synthetic"].sum(axis=0)).ravel() > 0
    features = {
        name: _shadow_features(shadow, data, cohort, rows, known)
        for name, cohort, rows in (
            ("shadow_members", "synthetic", shadow_members),
            ("attack_half", "holdout", attack_half),
            ("members", "train", eval_members),
            ("eval_half", "holdout", eval_half),
        )
    }
    x_train = np.concatenate([features["shadow_members"], features["attack_half"]])
    y_train = np.r_[np.ones(len(shadow_members)), np.zeros(len(attack_half))]
    with warnings.catch_warnings():  # a feature no patient has: filled with 0
        warnings.simplefilter("ignore", RuntimeWarning)
        fill = np.nanmean(x_train, axis=0)
    fill = np.where(np.isnan(fill), 0.0, fill)

    def prepared(x: np.ndarray) -> np.ndarray:
        missing = np.isnan(x)
        return np.hstack([np.where(missing, fill, x), missing.astype(float)])

    attacker = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(64, 64),
            alpha=1e-3,
            max_iter=300,
            early_stopping=True,
            random_state=seed,
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        attacker.fit(prepared(x_train), y_train)
    member_scores = attacker.predict_proba(prepared(features["members"]))[:, 1]
    nonmember_scores = attacker.predict_proba(prepared(features["eval_half"]))[:, 1]
    figures, curve = membership_figures(
        member_scores, nonmember_scores, rng, n_resamples, "shadow model"
    )
    attack_accuracy = attacker.score(prepared(x_train), y_train)
    return AttackResult(
        "shadow_membership",
        "The paper's membership inference: an LSTM+MLP shadow model trained on the "
        "synthetic data, and an MLP attacker on its per-patient perplexities.",
        figures,
        (curve,),
        {
            "members": len(eval_members),
            "nonmembers": len(eval_half),
            "attacker_training_rows": len(y_train),
            "attacker_training_accuracy": float(attack_accuracy),
            "shadow_epochs": shadow_epochs,
        },
    )


def _fit_shadow(synthetic: Cohort, epochs: int, hidden: int, seed: int):
    from ehrgen.models.baselines.lstm_mlp import LSTMMLP, LSTMMLPConfig
    from ehrgen.training import TrainingConfig

    config = LSTMMLPConfig(hidden=hidden, layers=1, mlp=2 * hidden, dropout=0.0)
    # The shadow model scores codes only: no model of gaps and values.
    training = TrainingConfig(
        epochs=epochs, batch_size=32, learning_rate=1e-3, weight_decay=0.0, seed=seed,
        time_values=None,
    )  # fmt: skip
    return LSTMMLP(config).fit(_renumbered(synthetic), training=training)


def _renumbered(cohort: Cohort) -> Cohort:
    """The cohort with its patients numbered 0, 1, ...: training refuses the ids
    reserved for synthetic patients (a guard against mixing them into real training
    data), and the shadow model is trained on synthetic patients on purpose."""
    return cohort.with_patient_ids(np.arange(len(cohort)).astype(str))


def _shadow_features(
    shadow: Any, data: PrivacyData, name: str, rows: np.ndarray, known: np.ndarray
) -> np.ndarray:
    """(len(rows), 2 * modalities + 1): each patient's log lpl and log mpl under the
    shadow model (NaN where it has nothing to score), and the share of its codes the
    shadow model never saw in training."""
    sets = data.sets[name][rows]
    unseen = np.asarray(sets @ (~known).astype(np.float32)).ravel()
    share = unseen / np.maximum(sets.getnnz(axis=1), 1)
    subset = getattr(data, name).select(rows)
    return np.hstack([_log_perplexities(shadow, subset, "set"), share[:, None]])


def _log_perplexities(model: Any, cohort: Cohort, protocol: str) -> np.ndarray:
    from ehrgen.evaluation.perplexity import patient_log_perplexities

    tables = [
        patient_log_perplexities(scores, len(cohort))
        for scores in (
            model.score_longitudinal(cohort, protocol=protocol),
            model.score_cross_modal(cohort, protocol=protocol),
        )
    ]
    return np.hstack(tables)


def likelihood_membership(
    model: Any,
    train: Cohort,
    holdout: Cohort,
    rng: np.random.Generator,
    n_resamples: int,
) -> AttackResult:
    """White-box membership: the generator's own likelihood of each candidate (the
    mean over modalities of its longitudinal and cross-modal log-perplexities; lower
    perplexity: called a member). The worst case a released model faces. Candidates:
    all of D2 and as many patients of D1."""
    protocol = "chain" if "chain" in getattr(model, "protocols", ()) else "set"
    n = min(len(train), len(holdout))
    members, nonmembers = _sample(rng, len(train), n), _sample(rng, n, n)
    scores = []
    for cohort, rows in ((train, members), (holdout, nonmembers)):
        table = _log_perplexities(model, cohort.select(rows), protocol)
        with warnings.catch_warnings():  # a one-visit patient has nothing scored
            warnings.simplefilter("ignore", RuntimeWarning)
            scores.append(-np.nanmean(table, axis=1))
    unscored = np.concatenate(scores)
    middle = np.nanmedian(unscored) if np.isfinite(unscored).any() else 0.0
    scores = [np.where(np.isnan(s), middle, s) for s in scores]
    figures, curve = membership_figures(*scores, rng, n_resamples, "likelihood")
    return AttackResult(
        "likelihood_membership",
        "White-box membership inference: the generator's own per-patient perplexity "
        "(lower: called a member).",
        figures,
        (curve,),
        {"members": n, "nonmembers": n, "protocol": protocol},
    )


# ---------------------------------------------------------------- attributes


def attribute_inference(
    data: PrivacyData,
    rng: np.random.Generator,
    n_resamples: int,
    *,
    n_targets: int,
    neighbours: int,
) -> AttackResult:
    """The paper's attribute inference, with k-nearest-neighbour imputation models.

    For each target (a patient of D1), one code is hidden and the attacker asks about
    two codes: the hidden one (truly present) and one drawn by prevalence among the
    codes the patient lacks (truly absent). An imputation model over a reference
    cohort R gives ``P_R(code | rest of record)``: the share of the rest's ``k``
    nearest patients in R that have the code (smoothed: ``(count + 0.5) / (k + 1)``).
    The prior P0 uses D1 without the target; the attack uses DS, the control D2 (both
    cut to the same size). The attacker claims "present" when
    ``log P_R - log P0 >= delta``; TPR and FPR as delta varies are ROC curves.
    """
    train = data.sets["train"]
    sizes = np.diff(train.indptr)
    targets = _sample(rng, len(data.train), n_targets)
    targets = np.sort(targets[sizes[targets] >= 2])
    rest, present = _hide_one_code(train[targets], rng)
    absent = _absent_codes(train, train[targets], rng)
    m = min(len(data.synthetic), len(data.holdout))
    references = {
        "attack": data.sets["synthetic"][_sample(rng, len(data.synthetic), m)],
        "control": data.sets["holdout"][_sample(rng, len(data.holdout), m)],
    }

    def imputed(reference, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """P_R(code | rest) of the present and of the absent code of each target."""
        near = nearest_neighbours(rest, reference, neighbours, exclude=exclude)
        k = near.shape[1]
        out = []
        for codes in (present, absent):
            has = np.asarray(reference[near.ravel(), np.repeat(codes, k)])
            out.append((has.reshape(-1, k).sum(axis=1) + 0.5) / (k + 1))
        return out[0], out[1]

    prior = imputed(train, exclude=targets)
    scores = {}
    for arm, reference in references.items():
        p_present, p_absent = imputed(reference)
        scores[arm] = (
            np.log(p_present) - np.log(prior[0]),
            np.log(p_absent) - np.log(prior[1]),
        )

    def figures(i: np.ndarray) -> dict[str, float]:
        out = {}
        for arm, (positive, negative) in scores.items():
            out[f"{arm}_tpr_at_0"] = float((positive[i] >= 0).mean())
            out[f"{arm}_fpr_at_0"] = float((negative[i] >= 0).mean())
        out["advantage_at_0"] = (out["attack_tpr_at_0"] - out["attack_fpr_at_0"]) - (
            out["control_tpr_at_0"] - out["control_fpr_at_0"]
        )
        return out

    directions = {
        "attack_tpr_at_0": "lower",
        "attack_fpr_at_0": "lower",
        "control_tpr_at_0": "reference",
        "control_fpr_at_0": "reference",
        "advantage_at_0": "closer to 0",
    }
    estimates = bootstrap(figures, (len(targets),), rng, n_resamples, directions)
    labels = np.r_[np.ones(len(targets)), np.zeros(len(targets))]
    curves = tuple(
        roc(f"attribute inference ({arm})", labels, np.concatenate(pair))
        for arm, pair in scores.items()
    )
    return AttackResult(
        "attribute_inference",
        "Attribute inference (METHOD.md): does an imputation model trained on the "
        "synthetic data recover a hidden code better than one trained on real "
        "non-members (the control arm)?",
        estimates,
        curves,
        {
            "targets": len(targets),
            "reference_size": m,
            "neighbours": neighbours,
            "attack_auc": curves[0].auc,
            "control_auc": curves[1].auc,
        },
    )


def _hide_one_code(
    sets: sparse.csr_matrix, rng: np.random.Generator
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Each row without one of its codes (drawn at random), and that code."""
    sets = sets.tocsr(copy=True)
    counts = np.diff(sets.indptr)
    picked = sets.indptr[:-1] + (rng.random(len(counts)) * counts).astype(np.int64)
    hidden = sets.indices[picked].copy()
    sets.data[picked] = 0
    sets.eliminate_zeros()
    return sets, hidden


def _absent_codes(
    population: sparse.csr_matrix, sets: sparse.csr_matrix, rng: np.random.Generator
) -> np.ndarray:
    """For each row, a code it lacks, drawn by its prevalence in ``population``."""
    prevalence = np.asarray(population.sum(axis=0), dtype=float).ravel()
    prevalence /= prevalence.sum()
    codes = rng.choice(len(prevalence), size=sets.shape[0], p=prevalence)
    for _ in range(100):
        held = np.asarray(sets[np.arange(sets.shape[0]), codes]).ravel()
        clash = np.flatnonzero(held)
        if not clash.size:
            break
        codes[clash] = rng.choice(len(prevalence), size=clash.size, p=prevalence)
    return codes


def rare_code_inference(
    data: PrivacyData,
    rng: np.random.Generator,
    n_resamples: int,
    *,
    n_targets: int,
    rare_max_share: float,
) -> AttackResult:
    """Predict each target's rare codes from its common ones: the rare codes of its
    nearest patient (Jaccard over common codes) in DS, against the same attack with
    D2 as the reference (the control). Rare: seen in at most ``rare_max_share`` of
    D1's patients (at least one patient). Micro-averaged F1 over the targets."""
    train = data.sets["train"]
    prevalence = np.asarray(train.sum(axis=0)).ravel()
    limit = max(1, int(rare_max_share * len(data.train)))
    rare_columns = prevalence <= limit  # codes never seen in D1 count as rare
    rare_of = sparse.diags(rare_columns.astype(np.float32))
    common_of = sparse.diags((~rare_columns).astype(np.float32))
    rare, common = train @ rare_of, train @ common_of
    eligible = np.flatnonzero((rare.getnnz(axis=1) > 0) & (common.getnnz(axis=1) > 0))
    targets = np.sort(eligible[_sample(rng, len(eligible), n_targets)])
    m = min(len(data.synthetic), len(data.holdout))
    counts = {}
    for arm, name in (("attack", "synthetic"), ("control", "holdout")):
        reference = data.sets[name][_sample(rng, data.sets[name].shape[0], m)]
        _, nearest = nearest_distances(common[targets], reference @ common_of)
        predicted = (reference @ rare_of)[nearest]
        predicted.eliminate_zeros()
        truth = rare[targets]
        hits = np.asarray(predicted.multiply(truth).sum(axis=1)).ravel()
        counts[arm] = (hits, predicted.getnnz(axis=1), truth.getnnz(axis=1))

    def figures(i: np.ndarray) -> dict[str, float]:
        out = {}
        for arm, (hits, n_predicted, n_true) in counts.items():
            tp, pred, true = hits[i].sum(), n_predicted[i].sum(), n_true[i].sum()
            precision = tp / pred if pred else 0.0
            recall = tp / true if true else 0.0
            total = precision + recall
            out[f"{arm}_f1"] = 2 * precision * recall / total if total else 0.0
        out["f1_advantage"] = out["attack_f1"] - out["control_f1"]
        return out

    directions = {"attack_f1": "lower", "control_f1": "reference"}
    directions["f1_advantage"] = "closer to 0"
    return AttackResult(
        "rare_code_inference",
        "Attribute inference on rare codes: a patient's rare codes predicted from its "
        "common ones by its nearest synthetic patient, against the same with real "
        "non-members.",
        bootstrap(figures, (len(targets),), rng, n_resamples, directions),
        (),
        {"targets": len(targets), "rare_max_patients": limit, "reference_size": m},
    )


# ---------------------------------------------------------------- memorisation


def nearest_neighbour_adversarial_accuracy(
    data: PrivacyData, rng: np.random.Generator, n_resamples: int
) -> AttackResult:
    """NNAA (Yale et al.) on visit-aware code sets, with equal samples of D1, D2, DS::

        AA(R, S) = 1/2 [ mean_r 1(d_RS(r) > d_RR(r)) + mean_s 1(d_SR(s) > d_SS(s)) ]
        NNAAR    = AA(D2, DS) - AA(D1, DS)

    d_XY(x) is the distance from x to its nearest patient of Y (another patient when
    X is Y). AA near 0.5: real and synthetic patients are mutual neighbours as often
    as real ones are; NNAAR near 0: no sign that DS sits closer to D1 than to D2.
    """
    n = min(len(data.train), len(data.holdout), len(data.synthetic))
    synthetic = data.visit_sets["synthetic"][_sample(rng, len(data.synthetic), n)]
    d_ss, _ = nearest_distances(synthetic, synthetic, exclude_self=True)
    indicators = {}
    for arm, name in (("train", "train"), ("test", "holdout")):
        real = data.visit_sets[name][_sample(rng, data.visit_sets[name].shape[0], n)]
        d_rs, _ = nearest_distances(real, synthetic)
        d_rr, _ = nearest_distances(real, real, exclude_self=True)
        d_sr, _ = nearest_distances(synthetic, real)
        indicators[arm] = ((d_rs > d_rr).astype(float), (d_sr > d_ss).astype(float))

    def figures(i_train, i_test, i_synthetic) -> dict[str, float]:
        aa = {
            arm: 0.5 * (real[i].mean() + synth[i_synthetic].mean())
            for (arm, (real, synth)), i in zip(indicators.items(), (i_train, i_test))
        }
        return {
            "aa_train": aa["train"],
            "aa_test": aa["test"],
            "nnaar": aa["test"] - aa["train"],
        }

    directions = {
        "aa_train": "closer to 0.5",
        "aa_test": "closer to 0.5",
        "nnaar": "closer to 0",
    }
    return AttackResult(
        "nnaa",
        "Nearest-neighbour adversarial accuracy and its privacy risk NNAAR "
        "(test minus train).",
        bootstrap(figures, (n, n, n), rng, n_resamples, directions),
        (),
        {"patients_per_set": n, "distance": "visit-aware Jaccard"},
    )


def copies(
    data: PrivacyData,
    rng: np.random.Generator,
    n_resamples: int,
    *,
    near_threshold: float,
) -> AttackResult:
    """The share of synthetic patients identical to a training patient (every visit
    and code, in order) and near-identical (visit-aware Jaccard distance to the
    nearest training patient at most ``near_threshold``), beside the same shares for
    D2, the rate at which real non-members resemble members by chance."""
    train_keys = set(sequence_keys(data.train, data.index))
    exact, near, closest = {}, {}, {}
    for name in ("synthetic", "holdout"):
        cohort = getattr(data, name)
        exact[name] = np.array(
            [k in train_keys for k in sequence_keys(cohort, data.index)], float
        )
        closest[name], _ = nearest_distances(
            data.visit_sets[name], data.visit_sets["train"]
        )
        near[name] = (closest[name] <= near_threshold).astype(float)

    def figures(i_synthetic, i_holdout) -> dict[str, float]:
        return {
            "exact_copy_rate": exact["synthetic"][i_synthetic].mean(),
            "exact_copy_rate_holdout": exact["holdout"][i_holdout].mean(),
            "near_copy_rate": near["synthetic"][i_synthetic].mean(),
            "near_copy_rate_holdout": near["holdout"][i_holdout].mean(),
            "median_distance_to_closest": np.median(closest["synthetic"][i_synthetic]),
            "median_distance_to_closest_holdout": np.median(
                closest["holdout"][i_holdout]
            ),
        }

    directions = {
        "exact_copy_rate": "lower",
        "exact_copy_rate_holdout": "reference",
        "near_copy_rate": "lower",
        "near_copy_rate_holdout": "reference",
        "median_distance_to_closest": "higher",
        "median_distance_to_closest_holdout": "reference",
    }
    groups = (len(data.synthetic), len(data.holdout))
    curves = tuple(
        Curve(
            f"distance to closest record ({name})",
            np.sort(closest[name]),
            np.arange(1, len(closest[name]) + 1) / max(len(closest[name]), 1),
            x_label="visit-aware Jaccard distance",
            y_label="share of patients (cumulative)",
        )
        for name in ("synthetic", "holdout")
    )
    return AttackResult(
        "copies",
        "Synthetic patients that copy a training patient, exactly or nearly, beside "
        "the rate for real non-members.",
        bootstrap(figures, groups, rng, n_resamples, directions),
        curves,
        {"near_threshold": near_threshold},
    )
