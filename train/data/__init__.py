"""Datasets for the training programs."""
