"""What switchyard tells operators: the access log, metrics, explanations."""
