"""Batch scoring of challenge submissions: many teams' segmentations of many cases.

``dqe batch CASES_DIR SUBMISSION_DIR... --out OUT_DIR [--labels GT_DIR] [--engine local|ray]``

* :mod:`~dqe.service.batch.dataset` finds cases, submissions (folder name = team) and ground truth;
* :mod:`~dqe.service.batch.prepare` decodes each case's images once and prepares every team's segmentation;
* :mod:`~dqe.service.batch.scoring` runs all views of a case in one engine call and adds gate verdicts;
* :mod:`~dqe.service.batch.pipeline` (local threads) and :mod:`~dqe.service.batch.ray_engine` (Ray Data) run them;
* :mod:`~dqe.service.batch.journal` makes results durable as they finish, so re-runs skip what is done;
* :mod:`~dqe.service.batch.metrics` / :mod:`~dqe.models.stats` add Dice/HD95/NSD and correlations;
* :mod:`~dqe.service.batch.summary`, :mod:`~dqe.service.batch.writer`, :mod:`~dqe.service.batch.report` write the outputs.

Heavy dependencies (onnxruntime, pandas, matplotlib, torch/MONAI, ray) are imported inside functions.
"""

from dqe.service.batch.runner import BatchOptions, BatchOutcome, run_batch

__all__ = ["BatchOptions", "BatchOutcome", "run_batch"]
