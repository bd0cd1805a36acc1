"""Datasets: GLUE (text) and VTAB-1k / CIFAR-10 (images)."""
