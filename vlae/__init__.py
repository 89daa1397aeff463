"""The model layer: the VLAE family, its likelihoods and scores, anomaly maps, the model card
and checkpoint, and the one image reader. No Ray, no Redis, no HTTP."""
