"""DICOM (and, later, NIfTI) files to the dataset folder: headers, series, labels, the HU cache."""
