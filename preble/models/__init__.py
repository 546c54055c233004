"""Models as files: the architecture facts of a Hugging Face folder (`config`, read by the engine and
the router alike, without torch), the demo model, tiny random models of each supported family and
weightless folders of the `random:NAME` architectures (`random_folder`)."""
