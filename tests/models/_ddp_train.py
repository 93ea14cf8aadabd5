"""Two-process training for test_promptehr.py (run by accelerate launch)."""

import json
import os
import sys
from pathlib import Path

from ehrgen.data.demo import demo_cohort
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig


def main(out: str) -> None:
    cohort = demo_cohort(24, seed=0)
    train, val = cohort.split([0.75, 0.25], seed=0)
    model = PromptEHR(PromptEHRConfig.tiny()).fit(
        train,
        val,
        TrainingConfig(epochs=2, batch_size=8, checkpoint_every_steps=3),
        output_dir=out,
    )
    # Each process says what it did, so the test can tell that both took part.
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    facts = {"world": int(world), "steps": model.training_.steps}
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1])
