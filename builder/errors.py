"""The domain errors of the builder. The CLI turns each into one message and an exit code."""


class MlimgError(Exception):
    """An expected failure, reported to the user as its message, without a traceback."""

    exit_code = 1


class ModelNotFound(MlimgError):
    """The model URI names nothing that exists."""


class InvalidModel(MlimgError):
    """The model exists but cannot be served: no MLmodel, bad MLmodel, no pyfunc flavor..."""


class InvalidRequirement(InvalidModel):
    """A line of the model's environment is not a requirement pip may be handed."""


class RequirementConflict(MlimgError):
    """The runtime's own requirements would change a version that the model pins."""


class InvalidOption(MlimgError):
    """An option's value is unusable (a CA file with no certificate, a bad index URL...)."""

    exit_code = 2


class OutputExists(MlimgError):
    """The output directory exists and is not one that mlimg wrote."""


class EnvironmentFailed(MlimgError):
    """The model's environment could not be created on this machine."""


class ServerFailed(MlimgError):
    """The runtime, run on the host, exited with an error."""


class EngineUnavailable(MlimgError):
    """No Docker engine answers."""


class BuildFailed(MlimgError):
    """The engine refused or failed the build."""


class SmokeTestFailed(MlimgError):
    """The image was built but does not serve the model."""


class PushFailed(MlimgError):
    """The registry refused the image, or could not be reached."""


class LockFailed(MlimgError):
    """The requirements could not be resolved into a lock."""


class WheelhouseFailed(MlimgError):
    """A wheelhouse could not be filled: a package without a wheel for the target, a download
    or a wheel build that failed."""
