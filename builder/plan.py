"""From a model and the user's options to a `BuildPlan`: every decision about the image, once."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from packaging.requirements import Requirement

import mlimg
from mlimg.engines import DEFAULT_ENGINE, MLFLOW_DISTRIBUTIONS, serving_engine
from mlimg.envmanagers import DEFAULT_ENV_MANAGER, env_manager
from mlimg.errors import InvalidOption
from mlimg.model import LocalModel
from mlimg.requirements import ModelRequirement, check_runtime_compatible
from mlimg_runtime import contract

if TYPE_CHECKING:
    from mlimg.lock import Lock

# Flavors that load with the skinny client plus the pyfunc essentials: for these, images install
# `mlflow-skinny` at the version the model pins `mlflow` to, and leave out the full package's
# server, UI and plotting dependencies (about 600 MB). Any other flavor keeps full mlflow.
SKINNY_FLAVORS = frozenset({
    "python_function", "sklearn", "xgboost", "lightgbm", "catboost", "statsmodels", "pytorch",
    "tensorflow", "keras", "onnx", "transformers", "sentence_transformers", "spacy", "prophet",
    "pmdarima",
})  # fmt: skip
_PYFUNC_ESSENTIALS = ("numpy", "pandas")  # what full mlflow brought that pyfunc itself imports
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
# Shared libraries that a package's wheels link to but do not carry, by the Debian package that
# ships them. lightgbm's lib_lightgbm.so needs libgomp.so.1 (the slim bases have no OpenMP
# runtime); xgboost, torch and scikit-learn bundle their own.
SYSTEM_PACKAGES_FOR = {"lightgbm": ("libgomp1",)}
_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.\-]+(=[A-Za-z0-9.+~:\-]+)?")


@dataclass(frozen=True)
class BuildOptions:
    """What the user chose on the command line."""

    env_manager: str = DEFAULT_ENV_MANAGER
    engine: str = DEFAULT_ENGINE
    base_image: str | None = None
    ca_cert: Path | None = None
    pip_index_url: str | None = None
    pip_extra_index_url: str | None = None
    full_mlflow: bool = False  # keep a pinned `mlflow` as it is instead of mlflow-skinny
    keep_tests: bool = False  # keep the test suites packages ship (tests/ in site-packages)
    system_packages: tuple[str, ...] = ()  # Debian packages the final image needs
    lock_file: Path | None = None  # install from this lock (mlimg lock) rather than a new one
    # install from this wheelhouse (mlimg wheels) and its lock, with no index and no network
    wheelhouse: Path | None = None
    platform: str | None = None  # the image's, as Docker names it; None: the lock's, or amd64


@dataclass(frozen=True)
class BuildPlan:
    """Everything the renderer needs: no more decisions are made after this."""

    model: LocalModel
    env_manager: str
    engine: str
    base_image: str
    build_image: str
    requirements: tuple[ModelRequirement, ...]  # the model's, after the mlflow-skinny swap
    # the engine's: under a constraint of the model's, or resolved with the model's own
    # requirements (engines.ServingEngine.resolved_with_model)
    runtime_requirements: tuple[Requirement, ...]
    runtime_no_deps: tuple[Requirement, ...]  # the engine's, installed without dependencies
    labels: dict[str, str]
    ca_cert: Path | None
    pip_index_url: str | None
    pip_extra_index_url: str | None
    keep_tests: bool = False
    system_packages: tuple[str, ...] = ()  # apt-get installed in the final stage
    lock: Lock | None = None  # what the image installs (lock.locked); None until resolved
    wheelhouse: Path | None = None  # every file the lock names: the build uses no index
    platform: str = "linux/amd64"  # the image's (the lock's wheels are this platform's)

    @property
    def build_args(self) -> dict[str, str]:
        """The values handed to the engine as build arguments (never written into a layer)."""
        args = {
            "PIP_INDEX_URL": self.pip_index_url,
            "PIP_EXTRA_INDEX_URL": self.pip_extra_index_url,
        }
        return {name: value for name, value in args.items() if value}


def plan_build(model: LocalModel, options: BuildOptions) -> BuildPlan:
    manager = env_manager(options.env_manager)
    engine = serving_engine(options.engine)
    engine.check_python(model)
    if options.wheelhouse is not None:
        if manager.name == "conda":
            raise InvalidOption(
                "--wheelhouse needs an env manager that installs from wheels alone (uv, "
                "virtualenv or local); conda's environment comes from its channels"
            )
        if options.lock_file is not None:
            raise InvalidOption("--wheelhouse carries its own lock: leave out --lock")
        # Nothing is downloaded: no CA to trust, no index to ask.
        options = dataclasses.replace(
            options, ca_cert=None, pip_index_url=None, pip_extra_index_url=None
        )
    if options.ca_cert is not None:
        check_ca_bundle(options.ca_cert)
    for option, url in (
        ("--pip-index-url", options.pip_index_url),
        ("--pip-extra-index-url", options.pip_extra_index_url),
    ):
        if url:
            check_index_url(option, url)
    requirements = environment_requirements(model, options.full_mlflow)
    runtime = engine.requirements(model)
    check_runtime_compatible(requirements, runtime)
    base_image = options.base_image or manager.base_image(model)
    return BuildPlan(
        model=model,
        env_manager=manager.name,
        engine=engine.name,
        base_image=base_image,
        build_image=manager.build_image or base_image,
        requirements=tuple(requirements),
        runtime_requirements=tuple(runtime),
        runtime_no_deps=tuple(engine.no_deps_requirements()),
        labels=image_labels(model, options.env_manager, base_image, requirements, engine.name),
        ca_cert=options.ca_cert,
        pip_index_url=options.pip_index_url,
        pip_extra_index_url=options.pip_extra_index_url,
        keep_tests=options.keep_tests,
        system_packages=system_packages(requirements, options.system_packages),
        wheelhouse=options.wheelhouse,
        platform=options.platform or "linux/amd64",
    )


def environment_requirements(
    model: LocalModel, full_mlflow: bool = False
) -> list[ModelRequirement]:
    """The requirements an image installs: the model's, with a pinned `mlflow` swapped for
    `mlflow-skinny` of the same version when every flavor of the model allows it."""
    requirements = list(model.requirements)
    if full_mlflow or not set(model.flavors) <= SKINNY_FLAVORS:
        return requirements
    swapped: list[ModelRequirement] = []
    for item in requirements:
        req = item.requirement
        if item.name == "mlflow" and not req.extras and req.url is None:
            skinny = Requirement(str(req).replace(req.name, "mlflow-skinny", 1))
            swapped.append(ModelRequirement(skinny, f"{item.source} (mlflow, as mlflow-skinny)"))
        else:
            swapped.append(item)
    if swapped == requirements:
        return requirements
    named = {item.name for item in requirements}
    for name in _PYFUNC_ESSENTIALS:
        if name not in named:
            swapped.append(ModelRequirement(Requirement(name), "mlflow's own requirements"))
    return swapped


def system_packages(
    requirements: list[ModelRequirement], chosen: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The Debian packages the final image installs: the known ones for the environment's
    packages, and those the user names (checked to be package names, nothing a shell reads)."""
    for name in chosen:
        if not _DEBIAN_PACKAGE.fullmatch(name):
            raise InvalidOption(f"--system-package {name!r} is not a Debian package name")
    known = [pkg for item in requirements for pkg in SYSTEM_PACKAGES_FOR.get(item.name, ())]
    return tuple(sorted({*known, *chosen}))


def mlflow_package(requirements: list[ModelRequirement]) -> str | None:
    """Which mlflow distribution an environment installs, if it names one."""
    return next((item.name for item in requirements if item.name in MLFLOW_DISTRIBUTIONS), None)


def image_labels(
    model: LocalModel,
    env_manager: str,
    base_image: str,
    requirements: list[ModelRequirement],
    engine: str = DEFAULT_ENGINE,
) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.title": model.display_name,
        "org.opencontainers.image.description": f"MLflow model {model.uri} served by mlimg",
        "org.opencontainers.image.base.name": base_image,
        "mlimg.version": mlimg.__version__,
        "mlimg.model.uri": model.uri,
        "mlimg.model.source": model.source or "",
        "mlimg.model.run-id": model.run_id or "",
        "mlimg.model.id": model.model_id or "",
        "mlimg.model.uuid": model.model_uuid or "",
        "mlimg.model.registered-name": model.registered_name or "",
        "mlimg.model.registered-version": model.registered_version or "",
        "mlimg.model.created": model.created or "",
        "mlimg.model.flavors": ",".join(model.flavors),
        "mlimg.model.mlflow-version": model.mlflow_version or "",
        "mlimg.python-version": model.python_version,
        "mlimg.env-manager": env_manager,
        "mlimg.engine": engine,
        "mlimg.mlflow-package": mlflow_package(requirements) or "",
        "mlimg.sbom": contract.SBOM_PATH,
    }
    return {key: value for key, value in labels.items() if value}


def check_ca_bundle(path: Path) -> None:
    """A CA bundle must be a readable file holding at least one PEM certificate."""
    if not path.is_file():
        raise InvalidOption(f"--ca-cert {path}: no such file")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidOption(f"--ca-cert {path}: cannot read it as a PEM file ({exc})") from None
    if _PEM_CERTIFICATE not in text:
        raise InvalidOption(f"--ca-cert {path}: holds no PEM certificate ({_PEM_CERTIFICATE})")


def check_index_url(option: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        raise InvalidOption(f"{option}: {redact_url(url)!r} is not an http(s) or file URL")
    if re.search(r"\s", url):
        raise InvalidOption(f"{option}: the URL contains white space")


def has_credentials(url: str | None) -> bool:
    """Whether a URL may carry a secret: user info (`user:token@host`) or a query string
    (`?private_token=...`); package indexes need neither."""
    if not url:
        return False
    parts = urlsplit(url)
    return "@" in parts.netloc or bool(parts.query) or bool(parts.fragment)


def redact_url(url: str) -> str:
    """The URL with any user info, query and fragment replaced, for messages and labels."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc=f"***@{parts.netloc.rsplit('@', 1)[1]}")
    if parts.query:
        parts = parts._replace(query="***")
    if parts.fragment:
        parts = parts._replace(fragment="***")
    return parts.geturl()
