"""Visit gaps and lab values for synthetic patients, learned from the training
cohort and sampled given each patient's codes (see :mod:`.model`)."""

from ehrgen.models.time_values.bins import QuantileBins
from ehrgen.models.time_values.config import TimeValueConfig
from ehrgen.models.time_values.model import TimeValueModel, fit_time_values

__all__ = ["QuantileBins", "TimeValueConfig", "TimeValueModel", "fit_time_values"]
