"""Datasets on disk, the anomaly synthesis of the Siamese branch, and the generated demo product."""
