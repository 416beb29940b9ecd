"""``dqe seg-train``: train a MONAI segmentation network on BraTS-style exams with any registered loss."""
