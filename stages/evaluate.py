"""DVC stage 'evaluate': test split only -> metrics/eval.json and plots/."""

import _src  # noqa: F401

from tlpipe.stages import main

main("evaluate")
