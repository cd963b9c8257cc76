"""DVC stage 'split': data/raw/ -> data/split/{train,val,test}.csv, classes.json, rejected.csv."""

import _src  # noqa: F401

from pathlib import Path

from tlpipe import split
from tlpipe.stage import run_stage

run_stage("split", lambda p: split.run(p.split, p.seed, labels=p.data.labels, corrections=Path(p.data.corrections),
                                       delimiter=p.data.label_delimiter))
