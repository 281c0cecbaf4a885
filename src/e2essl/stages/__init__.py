"""One thin entry point per DVC stage: read params, call the library, write outputs, log to MLflow."""
