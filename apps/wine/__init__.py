"""Worked example: wine cultivars (multiclass: class_0 / class_1 / class_2), scikit-learn's wine data."""
