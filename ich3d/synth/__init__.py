"""The synthetic head-CT generator: phantom anatomy, hemorrhages, DICOM writing."""
