"""Names the registry is organised by: the registered model, the experiment, the aliases, the
pipeline's MLflow identity, and the error the registry operations raise. Imported by the pipeline
definition, the platform settings and the CLI, so it imports nothing."""

REGISTERED_MODEL_NAME = "korean-writing-assistant"


EXPERIMENT_NAME = "selfguided"


CHALLENGER = "challenger"


CHAMPION = "champion"


PREVIOUS_CHAMPION_TAG = "previous_champion"


class RegistryError(RuntimeError):
    """The registry is not in a state the asked operation can work from."""


# The pipeline's MLflow identity: the Secret every MLflow-writing step gets as environment variables
# (secret key -> env var, like the other Secrets in pipelines/platform.py), created from the
# overlays' profile/mlflow-auth.env, and the permission its user holds on the experiment and the
# registered model (registry/auth.py sets it up).
PIPELINE_AUTH_SECRET_NAME = "selfguided-mlflow-auth"
USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"  # MLflow's own variables
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
PIPELINE_AUTH_SECRET_KEYS = {USERNAME_ENV: USERNAME_ENV, PASSWORD_ENV: PASSWORD_ENV}
PIPELINE_PERMISSION = "EDIT"  # what the register step needs (runs, versions, tags, alias moves), no more
