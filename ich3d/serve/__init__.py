"""The DICOM node: ``ich3d serve`` (docs/design.md §13)."""
