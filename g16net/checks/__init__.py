"""What a training config may hold (the schema) and the checks made before any work."""
