"""Training (fit, the teacher-feature cache) and checkpoints."""
