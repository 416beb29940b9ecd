"""The training pipeline: ratings tables -> views -> the paper's recipe -> evaluation -> a servable model.

Modules (torch, MONAI, TorchIO; nothing here is imported by the server):

* :mod:`dqe.training.config` - YAML configs as frozen dataclasses (``configs/paper.yaml``, ``configs/smoke.yaml``,
  ``configs/finetune.yaml``, ``configs/finetune_gpu.yaml``) and the preprocessing contract they ask for;
* :mod:`dqe.training.data` - ratings tables (CSV/Parquet), the split by exam, per-rater or mean targets, views
  through :func:`dqe.models.preprocess.build_views` and :class:`dqe.models.case.Case` (the serving contract);
* :mod:`dqe.training.transforms` - the augmentations, one per module;
* :mod:`dqe.training.model` - DenseNet121/201, released weights, frozen prefix, Ranger21/AdamW/SGD;
* :mod:`dqe.training.trainer` - the loop: metrics.csv, TensorBoard, resumable checkpoints, GPU when present;
* :mod:`dqe.training.evaluate` - MAE / RMSE / Pearson r per view and 3-view mean, scatter and Bland-Altman plots;
* :mod:`dqe.training.publish` - ONNX export with the parity check into the model home (``dqe serve --model ID``);
* :mod:`dqe.training.finetune` - metric-surrogate and failure-aware fine-tuning data from the released weights;
* :mod:`dqe.training.synthetic` - a phantom ratings table for smoke runs and tests;
* :mod:`dqe.training.cli` - ``dqe train``, ``dqe evaluate``, ``dqe finetune``, ``dqe publish``.
"""
