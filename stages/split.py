"""DVC stage 'split': data/raw/ -> data/split/{train,val,test}.csv, classes.json, rejected.csv."""

import _src  # noqa: F401

from tlpipe.stages import main

main("split")
