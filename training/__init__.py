"""InstantID cross-training (accelerate scripts); see the issues for what lands here."""
