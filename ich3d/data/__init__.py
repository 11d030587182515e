"""Tables, torch datasets, samplers and batch transforms over a built dataset."""
