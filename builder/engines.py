"""Serving engines: the servers an image (or `mlimg serve`) can answer with, each defined once.

An engine is what runs beside the model in its environment: the requirements it adds (under
a constraint of what the model installed, so that it never moves one of the model's packages),
packages it needs without their declared dependencies, the module that starts it, what a
cached environment must import to run it, and the ports it listens on beyond the contract's.
Every engine reads the image contract's settings (`mlimg_runtime.contract`) and ships
`mlimg_runtime` into the image; an engine whose own server reads other variables maps the
contract's onto them at start-up, inside the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from packaging.requirements import Requirement

from mlimg.errors import InvalidOption
from mlimg.model import LocalModel
from mlimg_runtime import contract

MLFLOW_DISTRIBUTIONS = frozenset({"mlflow", "mlflow-skinny"})


@dataclass(frozen=True)
class ServingEngine:
    name: str
    summary: str  # one line, for --help
    module: str  # `python -m MODULE` starts it, in the image and under `mlimg serve`
    requirements_file: str  # in mlimg_runtime: what it adds to the model's environment
    host_modules: tuple[str, ...]  # what an environment must have to run it
    import_check: str  # a cached environment must run this before it is reused
    local_install: str  # what `--env-manager local` needs installed in the current Python
    no_deps_file: str | None = None  # in mlimg_runtime: packages installed without dependencies
    ports: tuple[tuple[str, int], ...] = ()  # what it listens on beside the contract's port
    python_below: tuple[int, int] | None = None  # the first Python minor it does not run on
    # False: its requirements go in under a constraint of everything the model's environment
    # installed, so they never move a package. True: they are resolved together with the
    # model's own requirements, which still hold, but a package the model does not name may
    # move (MLServer pins protobuf below the version mlflow-skinny brings on its own).
    resolved_with_model: bool = False
    v2_protocol: bool = False  # it answers the V2 (Open Inference) protocol beside MLflow's
    streams: bool = False  # it streams predict_stream's chunks and answers OpenAI's routes

    @property
    def entrypoint(self) -> tuple[str, ...]:
        return ("python", "-m", self.module)

    @property
    def healthcheck(self) -> tuple[str, ...]:
        return ("python", "-m", "mlimg_runtime.healthcheck")

    def requirements(self, model: LocalModel) -> list[Requirement]:
        """What the engine adds to the model's environment, in images and on the host."""
        requirements = [Requirement(line) for line in _lines(self.requirements_file)]
        if not any(req.name in MLFLOW_DISTRIBUTIONS for req in model.requirements):
            # Every engine loads the model through mlflow.pyfunc: bring the skinny client the
            # model was saved with when the model's own requirements do not name mlflow.
            pin = f"=={model.mlflow_version}" if model.mlflow_version else ""
            requirements.append(Requirement(f"mlflow-skinny{pin}"))
        return requirements

    def check_python(self, model: LocalModel) -> None:
        """Refuse a model saved with a Python the engine does not run on."""
        minor = tuple(int(part) for part in model.python_minor.split("."))
        if self.python_below is not None and minor >= self.python_below:
            below = ".".join(map(str, self.python_below))
            raise InvalidOption(
                f"the {self.name} engine runs on Python below {below}, and the model was saved "
                f"with Python {model.python_version}: use --engine {DEFAULT_ENGINE}"
            )

    def no_deps_requirements(self) -> list[Requirement]:
        """Packages installed after the others, without the dependencies they declare."""
        if self.no_deps_file is None:
            return []
        return [Requirement(line) for line in _lines(self.no_deps_file)]


MLIMG = ServingEngine(
    name="mlimg",
    summary="mlimg's own server (gunicorn workers with an event-loop front end)",
    module="mlimg_runtime",
    requirements_file="requirements.txt",
    host_modules=("flask", "gunicorn", "httptools", "mlflow"),
    local_install="pip install 'mlimg[runtime]' mlflow",
    # The runtime's whole server and the MLflow loader (a second or so), so that a damaged
    # cache is found before reuse, not at start-up.
    import_check="import mlflow.pyfunc, mlimg_runtime.server, mlimg_runtime.batch",
    streams=True,
)
MLSERVER = ServingEngine(
    name="mlserver",
    summary="MLServer 1.7.1 with mlimg's MLflow runtime (V2 protocol, gRPC, metrics)",
    module="mlimg_runtime.mlserver_engine",
    requirements_file="requirements-mlserver.txt",
    no_deps_file="requirements-mlserver-no-deps.txt",
    host_modules=("mlserver", "mlserver_mlflow", "mlflow"),
    local_install="pip install mlserver==1.7.1 'uvloop<0.22' mlflow && "
    "pip install --no-deps mlserver-mlflow==1.7.1",
    import_check="import mlflow.pyfunc, mlserver, mlserver_mlflow, mlimg_runtime.mlserver_engine",
    ports=(("grpc", contract.MLSERVER_GRPC_PORT), ("metrics", contract.MLSERVER_METRICS_PORT)),
    python_below=(3, 13),  # mlserver 1.7.1 declares Python <3.13
    resolved_with_model=True,
    v2_protocol=True,
)
ENGINES = {engine.name: engine for engine in (MLIMG, MLSERVER)}
DEFAULT_ENGINE = MLIMG.name


def serving_engine(name: str) -> ServingEngine:
    try:
        return ENGINES[name]
    except KeyError:
        raise InvalidOption(
            f"unknown serving engine {name!r}; choose one of {', '.join(ENGINES)}"
        ) from None


def _lines(name: str) -> list[str]:
    text = files("mlimg_runtime").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
