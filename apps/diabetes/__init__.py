"""Worked example: diabetes progression (regression), scikit-learn's diabetes data."""
