"""Two-process training for test_promptehr.py (run by accelerate launch)."""

import sys

from ehrgen.data.demo import demo_cohort
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig


def main(out: str) -> None:
    cohort = demo_cohort(24, seed=0)
    train, val = cohort.split([0.75, 0.25], seed=0)
    PromptEHR(PromptEHRConfig.tiny()).fit(
        train,
        val,
        TrainingConfig(epochs=2, batch_size=8, checkpoint_every_steps=3),
        output_dir=out,
    )


if __name__ == "__main__":
    main(sys.argv[1])
