"""Generation benchmark: synthetic patients per second, by batch size, with and
without the key/value cache, for a PromptEHR model trained briefly on the demo cohort.

Prints figures; asserts nothing. Usage::

    python bench/generate_bench.py [--preset small] [--batch-sizes 1,16,64,256]
"""

from __future__ import annotations

import argparse
import resource
import time

from ehrgen.data.demo import demo_cohort
from ehrgen.generation import GenerationConfig
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--train-patients", type=int, default=500)
    parser.add_argument("--max-visits", type=int, default=10)
    args = parser.parse_args()

    cohort = demo_cohort(args.train_patients, seed=0)
    start = time.perf_counter()
    model = PromptEHR(PromptEHRConfig.preset(args.preset)).fit(
        cohort, training=TrainingConfig(epochs=1, batch_size=32, learning_rate=1e-3)
    )
    n_params = sum(p.numel() for p in model.model_.parameters())
    print(
        f"preset {args.preset}: {n_params:,} parameters, trained 1 epoch on "
        f"{len(cohort):,} demo patients in {time.perf_counter() - start:.0f} s"
    )
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        n = max(batch, 16)
        for cache in (True, False):
            sampling = GenerationConfig(
                batch_size=batch, use_cache=cache, max_visits=args.max_visits
            )
            start = time.perf_counter()
            synthetic = model.generate(n, generation=sampling, seed=0)
            seconds = time.perf_counter() - start
            print(
                f"batch {batch:>3}, cache {'on ' if cache else 'off'}: "
                f"{n / seconds:7.2f} patients/s ({n} patients, "
                f"{synthetic.n_visits / n:.1f} visits and "
                f"{synthetic.n_events / n:.0f} codes each, {seconds:.1f} s)"
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
