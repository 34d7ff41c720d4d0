"""Names the registry is organised by: the registered model, the experiment, the aliases, and the
error the registry operations raise. Imported by the pipeline definition and the CLI, so it imports
nothing heavy."""

REGISTERED_MODEL_NAME = "korean-writing-assistant"


EXPERIMENT_NAME = "selfguided"


CHALLENGER = "challenger"


CHAMPION = "champion"


PREVIOUS_CHAMPION_TAG = "previous_champion"


class RegistryError(RuntimeError):
    """The registry is not in a state the asked operation can work from."""

