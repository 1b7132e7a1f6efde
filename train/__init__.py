"""Training: synthetic speech data and the recipes that train the embedded models."""
