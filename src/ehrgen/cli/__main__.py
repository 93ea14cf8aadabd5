"""`python -m ehrgen.cli`: the ehrgen command (for accelerate launch -m)."""

from ehrgen.cli import main

main()
