"""Run reports: per task and stage the curves, calibration, score distributions and AUC by
segment (:mod:`.figures`), the run record (:mod:`.record`), written to the run folder and to
W&B (:mod:`.write`) by a Lightning callback (:mod:`.callback`)."""
