"""Metrics, threshold calibration, heatmaps, the HTML report and the per-image outputs."""
