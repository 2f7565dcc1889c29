"""Scoring outside training: the bundle, the feature path, the predictor, batch and server.

Importing this package loads neither Hydra nor Lightning; the export (``atrank-export``)
reads training checkpoints and lives in :mod:`atrank.serve.export`.
"""
