"""Generation benchmark: synthetic patients per second, and the cost of a visit
against the length of the history, for PromptEHR under both objectives.

For each objective, a ``small`` model is trained briefly on the demo cohort, then:

* patients per second from scratch at each batch size (the one-pass model with its
  encoder cache; ``--no-cache`` rows without any cache, for comparison);
* seconds per generated visit when continuing patients whose histories hold 1 to 40
  visits (demo visits chained), which is flat when the history is never read again.

Prints figures; asserts nothing. Usage::

    python bench/generate_bench.py [--preset small] [--batch-sizes 64,256]
        [--objectives one-pass,paper] [--histories 1,10,20,40]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from ehrgen.data import Cohort, Patient
from ehrgen.data.demo import demo_cohort
from ehrgen.generation import GenerationConfig
from ehrgen.models.promptehr import PromptEHR, PromptEHRConfig
from ehrgen.training import TrainingConfig

sys.path.insert(0, str(Path(__file__).parent))
from train_bench import long_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--objectives", default="one-pass,paper")
    parser.add_argument("--histories", default="1,10,20,40")
    parser.add_argument("--train-patients", type=int, default=500)
    parser.add_argument("--patients", type=int, default=512)
    parser.add_argument("--max-visits", type=int, default=10)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()

    cohort = demo_cohort(args.train_patients, seed=0)
    histories = long_cohort(64, visits=40, seed=1)
    for objective in args.objectives.split(","):
        start = time.perf_counter()
        model = PromptEHR(PromptEHRConfig.preset(args.preset, objective=objective)).fit(
            cohort, training=TrainingConfig(epochs=1, batch_size=16, learning_rate=1e-3)
        )
        print(
            f"[{objective}] preset {args.preset}: trained 1 epoch on "
            f"{len(cohort):,} demo patients in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            for cache in (True, False) if args.no_cache else (True,):
                sampling = GenerationConfig(
                    batch_size=batch, use_cache=cache, max_visits=args.max_visits
                )
                start = time.perf_counter()
                synthetic = model.generate(args.patients, generation=sampling, seed=0)
                seconds = time.perf_counter() - start
                print(
                    f"[{objective}] batch {batch:>3}, cache {'on ' if cache else 'off'}"
                    f": {args.patients / seconds:7.1f} patients/s "
                    f"({synthetic.n_visits / args.patients:.1f} visits and "
                    f"{synthetic.n_events / args.patients:.0f} codes each, "
                    f"{seconds:.1f} s)",
                    flush=True,
                )
        for length in (int(h) for h in args.histories.split(",")):
            given = Cohort.from_patients(
                [Patient(p.patient_id, p.static, p.visits[:length]) for p in histories],
                histories.schema,
            )
            sampling = GenerationConfig(batch_size=64, max_visits=length + 5)
            start = time.perf_counter()
            model.continue_patients(given, 5, sampling, seed=0)
            seconds = time.perf_counter() - start
            print(
                f"[{objective}] history of {length:>2} visits: "
                f"{1000 * seconds / (5 * len(given)):.1f} ms per new visit",
                flush=True,
            )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
