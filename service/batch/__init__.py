"""Batch scoring of challenge submissions: many teams' segmentations of many cases.

``dqe batch CASES_DIR SUBMISSION_DIR... --out OUT_DIR [--labels GT_DIR] [--engine local|ray]``

* :mod:`~service.batch.dataset` finds cases, submissions (folder name = team) and ground truth;
* :mod:`~service.batch.prepare` decodes each case's images once and prepares every team's segmentation;
* :mod:`~service.batch.scoring` runs all views of a case in one engine call and adds gate verdicts;
* :mod:`~service.batch.pipeline` (local threads) and :mod:`~service.batch.ray_engine` (Ray Data) run them;
* :mod:`~service.batch.journal` makes results durable as they finish, so re-runs skip what is done;
* :mod:`~service.batch.metrics` / :mod:`~service.batch.stats` add Dice/HD95/NSD and correlations;
* :mod:`~service.batch.summary`, :mod:`~service.batch.writer`, :mod:`~service.batch.report` write the outputs.

Heavy dependencies (onnxruntime, pandas, matplotlib, torch/MONAI, ray) are imported inside functions.
"""

from service.batch.runner import BatchOptions, BatchOutcome, run_batch

__all__ = ["BatchOptions", "BatchOutcome", "run_batch"]
