"""The baselines PromptEHR is compared with (METHOD.md, Baselines), each a
:class:`ehrgen.models.base.Generator`."""

from ehrgen.models.baselines.gpt2 import GPT2Baseline as GPT2Baseline
from ehrgen.models.baselines.gpt2 import GPT2BaselineConfig as GPT2BaselineConfig
from ehrgen.models.baselines.halo import HALO as HALO
from ehrgen.models.baselines.halo import HALOConfig as HALOConfig
from ehrgen.models.baselines.lstm_medgan import LSTMMedGAN as LSTMMedGAN
from ehrgen.models.baselines.lstm_medgan import LSTMMedGANConfig as LSTMMedGANConfig
from ehrgen.models.baselines.lstm_mlp import LSTMMLP as LSTMMLP
from ehrgen.models.baselines.lstm_mlp import LSTMMLPConfig as LSTMMLPConfig
from ehrgen.models.baselines.synteg import SynTEG as SynTEG
from ehrgen.models.baselines.synteg import SynTEGConfig as SynTEGConfig
