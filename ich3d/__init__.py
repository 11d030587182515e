"""ich3d: intracranial hemorrhage detection on head CT (RSNA 2019 format)."""

__version__ = "0.1.0"
