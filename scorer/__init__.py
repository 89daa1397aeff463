"""Ray Serve scoring of image batches; results published to Redis streams."""
