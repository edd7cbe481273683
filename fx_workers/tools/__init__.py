"""Tools around the pipeline: the CLI, the loader and generator, the doctor, the local stack's services."""
