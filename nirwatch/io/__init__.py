"""Reading spectra data sets from files: CSV, npz, JCAMP-DX, with one set of checks."""
