"""DVC stage 'trust': prediction sets and the unfamiliar-input score, calibrated on val -> models/trust/."""

import _src  # noqa: F401

from tlpipe import trust
from tlpipe.stage import run_stage

run_stage("trust", lambda p: trust.run(p.trust, batch_size=p.evaluate.batch_size))
