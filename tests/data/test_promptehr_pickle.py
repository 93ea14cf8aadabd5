"""Tests of read_promptehr_pickle: mapping, safety and bad input."""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import re
import shlex
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ehrgen.data import Visit
from ehrgen.data.formats.promptehr_pickle import read_promptehr_pickle
from ehrgen.errors import ConfigError, SchemaError

REAL_PICKLE = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "promptehr_demo"
    / "data.pkl"
)


class Voc:
    """A stand-in for the reference implementation's vocabulary class."""

    __module__ = "promptehr.data"

    def __init__(self, words: list[str]) -> None:
        self.idx2word = dict(enumerate(words))
        self.word2idx = {w: i for i, w in self.idx2word.items()}


@pytest.fixture
def write_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    """A function that pickles an object to a file, as the reference code would."""
    package = types.ModuleType("promptehr")
    module = types.ModuleType("promptehr.data")
    module.Voc = Voc  # type: ignore[attr-defined]
    package.data = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "promptehr", package)
    monkeypatch.setitem(sys.modules, "promptehr.data", module)

    def write(obj: Any, name: str = "data.pkl", protocol: int = 4) -> Path:
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        return path

    return write


def small_data() -> dict[str, Any]:
    """Three patients; the second has only an empty visit."""
    return {
        "visit": [
            [[[0, 1, 1], [0], [2]], [[2], [], []]],
            [[[], [], []]],
            [[[1], [1], [0, 1]]],
        ],
        "order": ["diag", "prod", "med"],
        "voc": {
            "diag": Voc(["4019", "25000", "V4501"]),
            "prod": Voc(["3893", "9904"]),
            "med": Voc(["N02B", "A02B", "C07A"]),
        },
        "feature": np.array([[0.5, 1.0, 2.0], [-1.0, 0.0, 0.0], [1.25, 0.0, 1.0]]),
        "n_num_feature": 1,
        "cat_cardinalties": [2, 3],
        "y": [np.bool_(True), np.bool_(False), np.bool_(False)],
    }


# --------------------------------------------------------------------------- mapping


def test_small_pickle_maps_codes_features_and_labels(write_pickle, caplog):
    """Check that codes, features, labels and ids map exactly as documented."""
    path = write_pickle(small_data())
    with caplog.at_level(logging.WARNING):
        cohort = read_promptehr_pickle(path)
    assert cohort.schema.modalities == ("diagnosis", "procedure", "drug")
    assert cohort.schema.numerical == ("age",)
    assert cohort.schema.categorical == {"cat_0": ("0", "1"), "cat_1": ("0", "1", "2")}
    assert list(cohort.patient_ids) == ["0", "2"]
    first, last = cohort[0], cohort[1]
    assert first.static == {"cat_0": "1", "cat_1": "2", "age": 0.5}
    assert first.visits == (
        Visit(
            {
                "diagnosis": ("ICD9CM//4019", "ICD9CM//25000"),
                "procedure": ("ICD9PROC//3893",),
                "drug": ("ATC//C07A",),
            }
        ),
        Visit({"diagnosis": ("ICD9CM//V4501",)}),
    )
    assert last.static == {"cat_0": "0", "cat_1": "1", "age": 1.25}
    assert last.visits[0].events["drug"] == ("ATC//N02B", "ATC//A02B")
    assert cohort.times_are_placeholders
    assert cohort.labels["y"].tolist() == [1.0, 0.0]
    assert cohort.metadata["repeated_code_lists"] == 1
    assert cohort.metadata["declared_vocabulary"] == {
        "diagnosis": 3,
        "procedure": 2,
        "drug": 3,
    }
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "1 patient(s) with no visit" in warnings_logged[0].getMessage()


def test_names_given_by_the_caller_are_used(write_pickle):
    """Check that categorical_names and label_name rename the columns and label."""
    path = write_pickle(small_data())
    cohort = read_promptehr_pickle(
        path, categorical_names=["gender", "ethnicity"], label_name="mortality"
    )
    assert set(cohort.schema.categorical) == {"gender", "ethnicity"}
    assert cohort[0].static["ethnicity"] == "2"
    assert list(cohort.labels) == ["mortality"]


def test_optional_fields_may_be_absent(write_pickle):
    """Check that a pickle without feature or y gives no static features or labels."""
    data = small_data()
    for key in ("feature", "n_num_feature", "cat_cardinalties", "y"):
        del data[key]
    cohort = read_promptehr_pickle(write_pickle(data))
    assert cohort.schema.features == ()
    assert cohort.labels == {}
    assert len(cohort) == 2


def test_order_subset_and_permutation_follow_the_file(write_pickle):
    """Check that code lists follow 'order' and the schema keeps only its modalities."""
    data = small_data()
    data["order"] = ["med", "diag"]
    data["visit"] = [[[[1], [2]]], [[[0], []]], [[[], [0]]]]
    cohort = read_promptehr_pickle(write_pickle(data))
    assert cohort.schema.modalities == ("diagnosis", "drug")
    assert cohort[0].visits[0].events == {
        "diagnosis": ("ICD9CM//V4501",),
        "drug": ("ATC//A02B",),
    }


def test_both_numpy_module_spellings_load_without_warnings(write_pickle, tmp_path):
    """Check that numpy.core and numpy._core helpers both load, with no warning."""
    # Protocol 3 names globals as text lines, so the module can be respelled in place.
    raw = write_pickle(small_data(), protocol=3).read_bytes()
    old, new = b"numpy.core.multiarray\n", b"numpy._core.multiarray\n"
    spellings = [raw.replace(new, old), raw.replace(old, new)]
    assert old in spellings[0] and new not in spellings[0]
    assert new in spellings[1] and old not in spellings[1]
    cohorts = []
    for i, content in enumerate(spellings):
        path = tmp_path / f"spelling{i}.pkl"
        path.write_bytes(content)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cohorts.append(read_promptehr_pickle(path))
    assert cohorts[0] == cohorts[1]
    assert cohorts[0][0].static["age"] == 0.5


# --------------------------------------------------------------------------- safety


class _SystemCall:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.target))}",)


class _OpenCall(_SystemCall):
    def __reduce__(self):
        return open, (str(self.target), "w")


class _EvalCall(_SystemCall):
    def __reduce__(self):
        return eval, (f"open({str(self.target)!r}, 'w').close()",)


class _PathTouch(_SystemCall):
    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


PAYLOADS = [
    (_SystemCall, f"{os.system.__module__}.system"),
    (_OpenCall, "io.open"),
    (_EvalCall, "builtins.eval"),
    (_PathTouch, "pathlib.Path.touch"),
]


@pytest.mark.parametrize(("payload", "refused"), PAYLOADS)
def test_malicious_pickle_is_refused_and_never_run(tmp_path, payload, refused):
    """Check that a pickle calling os.system/open/eval is refused before it runs."""
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"visit": [payload(target)], "order": ["diag"]}))
    with pytest.raises(SchemaError, match=re.escape(f"'{refused}'")) as info:
        read_promptehr_pickle(path)
    assert str(path) in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize(("payload", "refused"), PAYLOADS)
def test_malicious_payload_is_live_under_plain_pickle(tmp_path, payload, refused):
    """Check that each payload does create the file when unpickled naively."""
    target = tmp_path / "pwned"
    result = pickle.loads(pickle.dumps(payload(target)))
    if hasattr(result, "close"):
        result.close()
    assert target.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy", "load"),
        ("numpy.core.multiarray", "fromstring"),
        ("promptehr.data", "Dataset"),
        ("subprocess", "run"),
    ],
)
def test_globals_outside_the_allow_list_are_refused(tmp_path, module, name):
    """Check that other globals, even from allowed modules, are refused."""
    path = tmp_path / "global.pkl"
    # GLOBAL module name, EMPTY_TUPLE, REDUCE, STOP: call module.name().
    path.write_bytes(f"c{module}\n{name}\n)R.".encode())
    with pytest.raises(SchemaError, match=re.escape(f"'{module}.{name}'")):
        read_promptehr_pickle(path)


# --------------------------------------------------------------------------- bad input


def _without(key: str) -> Callable[[dict], Any]:
    def change(data: dict) -> dict:
        del data[key]
        return data

    return change


def _setting(key: str, value: Any) -> Callable[[dict], Any]:
    def change(data: dict) -> dict:
        data[key] = value
        return data

    return change


def _bad_code(data: dict) -> dict:
    data["visit"][2][0][2] = [0, 7]
    return data


def _short_visit(data: dict) -> dict:
    data["visit"][0][1] = [[2], []]
    return data


BAD_INPUTS = {
    "not a dict": (lambda data: list(data), "expected a pickled dict"),
    "no visit": (_without("visit"), "missing field 'visit'"),
    "no order": (_without("order"), "missing field 'order'"),
    "no voc": (_without("voc"), "missing field 'voc'"),
    "no n_num_feature": (_without("n_num_feature"), "missing field 'n_num_feature'"),
    "empty visit": (_setting("visit", []), "field 'visit' must be a non-empty list"),
    "unknown modality": (
        _setting("order", ["diag", "lab", "med"]),
        "field 'order': unknown modality 'lab'",
    ),
    "voc lacks modality": (
        _setting("voc", {"diag": Voc(["4019"])}),
        r"field 'voc' .*'prod' is missing",
    ),
    "voc not a Voc": (
        _setting("voc", {"diag": 1, "prod": 2, "med": 3}),
        r"field 'voc'\['diag'\] must be a promptehr.data.Voc",
    ),
    "feature rows": (
        _setting("feature", np.zeros((2, 3))),
        "field 'feature' has 2 rows but 'visit' has 3 patients",
    ),
    "feature columns": (
        _setting("cat_cardinalties", [2]),
        "field 'feature' has 3 columns",
    ),
    "category out of range": (
        _setting("feature", np.array([[0.0, 1, 2], [0, 0, 3], [0, 0, 0]])),
        r"field 'feature', patient 1, column 2 \('cat_1'\): expected a category",
    ),
    "y length": (_setting("y", [True]), "field 'y' must hold one"),
    "code id": (
        _bad_code,
        "field 'visit', patient 2, visit 0, modality 'med': code id 7 is not in",
    ),
    "code lists": (
        _short_visit,
        "field 'visit', patient 0, visit 1: expected 3 code lists",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_structure_names_the_file_and_field(write_pickle, case):
    """Check that each structural fault raises a SchemaError naming file and field."""
    change, message = BAD_INPUTS[case]
    path = write_pickle(change(small_data()))
    with pytest.raises(SchemaError, match=message) as info:
        read_promptehr_pickle(path)
    assert str(info.value).startswith(str(path))


def test_missing_file_is_a_schema_error(tmp_path):
    """Check that a missing file raises a SchemaError naming it."""
    path = tmp_path / "absent.pkl"
    with pytest.raises(SchemaError, match=re.escape(f"{path}: cannot open")):
        read_promptehr_pickle(path)


def test_truncated_pickle_is_a_schema_error(write_pickle):
    """Check that the first half of a pickle raises a SchemaError, not EOFError."""
    path = write_pickle(small_data())
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(SchemaError, match="not a readable pickle"):
        read_promptehr_pickle(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"categorical_names": ["gender"]}, "must name each of the 2 categorical"),
        ({"categorical_names": ["Gender", "x"]}, "unique lower-case identifiers"),
        ({"categorical_names": ["age", "x"]}, "must not reuse"),
        ({"label_name": ""}, "'label_name' parameter"),
    ],
)
def test_bad_arguments_are_config_errors(write_pickle, kwargs, message):
    """Check that invalid names passed by the caller raise a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        read_promptehr_pickle(write_pickle(small_data()), **kwargs)


# --------------------------------------------------------------------------- real file


@pytest.fixture(scope="module")
def real_cohort():
    if not REAL_PICKLE.exists():
        pytest.skip(f"{REAL_PICKLE} is not available")
    return read_promptehr_pickle(REAL_PICKLE)


def test_real_pickle_counts(real_cohort):
    """Check the real demo pickle's patients, visits, vocabularies and labels."""
    stats = real_cohort.stats()
    assert (stats.n_patients, stats.n_visits) == (1000, 2516)
    assert stats.vocabulary == {"diagnosis": 1443, "procedure": 613, "drug": 105}
    assert real_cohort.metadata["declared_vocabulary"] == {
        "diagnosis": 1958,
        "procedure": 1430,
        "drug": 112,
    }
    assert real_cohort.metadata["repeated_code_lists"] == 791
    assert list(real_cohort.patient_ids) == [str(i) for i in range(1000)]
    assert real_cohort.labels["y"].sum() == 187
    assert real_cohort.times_are_placeholders
    assert real_cohort[0].visits[0].codes("diagnosis")[0] == "ICD9CM//4239"


def test_real_pickle_visits_hold_each_code_once(real_cohort):
    """Check that no imported visit holds the same code twice."""
    pairs = real_cohort.event_visit.astype(np.int64) * len(real_cohort.code_values)
    pairs += real_cohort.event_codes
    assert len(np.unique(pairs)) == real_cohort.n_events


def test_real_pickle_first_half_is_a_schema_error(tmp_path):
    """Check that the first half of the real file raises a SchemaError."""
    if not REAL_PICKLE.exists():
        pytest.skip(f"{REAL_PICKLE} is not available")
    content = REAL_PICKLE.read_bytes()
    path = tmp_path / "half.pkl"
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(SchemaError, match="truncated"):
        read_promptehr_pickle(path)
