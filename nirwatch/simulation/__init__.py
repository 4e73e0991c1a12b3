"""Simulated tablet-line NIR spectra: for the demo, the tests and a first model without data."""
