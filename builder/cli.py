"""The command line: parse options, call the steps (`build`, `envs`, `host`) in order, and turn
domain errors into one message and an exit code."""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

import mlimg
from mlimg import daemon, envs, lock, manifests, spark, wheelhouse
from mlimg import host as host_runtime
from mlimg.build import BuildSettings, build_and_tag, write_context
from mlimg.engines import DEFAULT_ENGINE, ENGINES, serving_engine
from mlimg.envmanagers import DEFAULT_ENV_MANAGER, ENV_MANAGERS
from mlimg.errors import InvalidOption, MlimgError
from mlimg.files import write_whole
from mlimg.model import LocalModel, load_local_model
from mlimg.plan import BuildOptions, plan_build
from mlimg.render import build_command
from mlimg.spark import SparkJob
from mlimg.uris import open_model


def _say(message: str) -> None:
    click.echo(message, err=True)


def _reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures end as `mlimg: error: ...` and their exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except MlimgError as exc:
            _say(f"mlimg: error: {exc}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _say("mlimg: interrupted")
            sys.exit(130)

    return wrapper


_MODEL_OPTION = click.option(
    "-m",
    "--model-uri",
    "model_uri",
    required=True,
    metavar="MODEL",
    help="The model: a local directory, or any MLflow model URI (runs:/, models:/, "
    "mlflow-artifacts:/, s3://, ...; MLFLOW_TRACKING_URI names the tracking server).",
)


_ENGINE_OPTION = click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default=DEFAULT_ENGINE,
    show_default=True,
    help="The serving engine: "
    + "; ".join(f"{engine.name}: {engine.summary}" for engine in ENGINES.values())
    + ".",
)


# Where packages come from: for builds, and for the locks made before them.
_INDEX_OPTIONS = (
    click.option(
        "--ca-cert",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=["MLIMG_CA_CERT", "PIP_CERT"],
        show_envvar=True,
        help="A PEM CA bundle to trust while the build downloads packages (a corporate "
        "proxy's CA). Defaults to $MLIMG_CA_CERT, then to $PIP_CERT, the bundle the host's "
        "pip trusts. Never copied into the final image.",
    ),
    click.option("--no-ca-cert", is_flag=True, help="Trust no extra CA, even if $PIP_CERT is set."),
    click.option(
        "--pip-index-url",
        metavar="URL",
        envvar="MLIMG_PIP_INDEX_URL",
        help="The package index to install from (may carry credentials; never kept in the image).",
    ),
    click.option(
        "--pip-extra-index-url",
        metavar="URL",
        envvar="MLIMG_PIP_EXTRA_INDEX_URL",
        help="An extra package index, searched beside the main one.",
    ),
)
_FULL_MLFLOW_OPTION = click.option(
    "--full-mlflow",
    is_flag=True,
    help="Install the full mlflow package the model pins. By default the image gets "
    "mlflow-skinny of the same version (about 600 MB less) when the model's flavors "
    "need nothing more.",
)


_PLATFORM_OPTION = click.option(
    "--platform",
    type=click.Choice(list(lock.PLATFORMS)),
    help=f"The image's platform: the wheels locked are those it installs. Default: "
    f"{lock.DEFAULT_PLATFORM} (a given lock's own).",
)
_PYTHON_OPTION = click.option(
    "--python",
    metavar="X.Y",
    callback=lambda ctx, param, value: _python_version(value),
    help="The image's Python. Default: the one the model was saved with.",
)


def _python_version(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"3\.\d{1,2}", value):
        raise click.BadParameter(f"{value!r} is not a Python version X.Y")
    return value


def _build_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        _MODEL_OPTION,
        click.option(
            "--env-manager",
            type=click.Choice(list(ENV_MANAGERS)),
            default=DEFAULT_ENV_MANAGER,
            show_default=True,
            help="How the image installs the model's environment.",
        ),
        _ENGINE_OPTION,
        click.option(
            "--base-image",
            metavar="IMAGE",
            help="Base of the final image. Default: python:X.Y-slim, X.Y the model's Python.",
        ),
        *_INDEX_OPTIONS,
        _FULL_MLFLOW_OPTION,
        click.option(
            "--lock",
            "lock_file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Install from this lock (from mlimg lock) rather than resolving one, so that a "
            "rebuild installs the same files; refused, with the difference named, if it does "
            "not fit the model.",
        ),
        click.option(
            "--wheelhouse",
            type=click.Path(file_okay=False, path_type=Path),
            help="Build offline from this wheelhouse (from mlimg wheels) and its lock: no "
            "package index is asked, and mlimg build gives the build no network at all. Not "
            "with --env-manager conda.",
        ),
        _PLATFORM_OPTION,
        click.option(
            "--system-package",
            "system_packages",
            multiple=True,
            metavar="NAME",
            help="A Debian package the final image needs (a shared library a wheel links to), "
            "installed with apt-get; repeat for more. Known ones are added by themselves "
            "(libgomp1 for lightgbm).",
        ),
        click.option(
            "--keep-tests",
            is_flag=True,
            help="Keep the test suites that packages ship (tests/ directories in "
            "site-packages). By default they are left out of the image (about 100 MB for a "
            "scikit-learn model).",
        ),
    ]
    return _apply(tuple(options))(command)


def _apply(options: tuple[Callable[..., Any], ...]) -> Callable[..., Any]:
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _options(**options: Any) -> BuildOptions:
    if options.pop("no_ca_cert"):
        options["ca_cert"] = None
    return BuildOptions(**options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mlimg.__version__, prog_name="mlimg")
def cli() -> None:
    """Ship an MLflow model as a container image that serves the MLflow scoring protocol."""


@cli.command("generate-dockerfile")
@_build_options
@click.option(
    "-d",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mlimg-dockerfile"),
    show_default=True,
    help="Where to write the Dockerfile and its build context.",
)
@_reports_errors
def generate_dockerfile(model_uri: str, output_dir: Path, **options: Any) -> None:
    """Write a Dockerfile and a self-contained build context for MODEL (no Docker engine needed)."""
    context = write_context(model_uri, _options(**options), output_dir, _say)
    for notice in context.notices:
        _say(f"note: {notice}")
    _say(f"wrote {context.path}/Dockerfile and its build context")
    _say(f"build it with: {build_command(context.plan)} {context.path}")


@cli.command("lock")
@_MODEL_OPTION
@_ENGINE_OPTION
@_PLATFORM_OPTION
@_PYTHON_OPTION
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the lock. Default: standard output.",
)
@_FULL_MLFLOW_OPTION
@_apply(_INDEX_OPTIONS)
@_reports_errors
def lock_command(
    model_uri: str, platform: str | None, python: str | None, output: Path | None, **options: Any
) -> None:
    """Resolve MODEL's environment and the serving engine to exact versions with hashes."""
    platform = platform or lock.DEFAULT_PLATFORM
    if output is not None and not output.parent.is_dir():
        raise click.BadParameter(f"the directory {output.parent} does not exist", param_hint="'-o'")
    with open_model(model_uri) as resolved:
        plan = plan_build(load_local_model(resolved), _options(**options))
        result = lock.resolve(plan, _say, platform, python)
    if output is None:
        sys.stdout.write(result.text)
        return
    lock.write(result, output)
    _say(f"wrote {output}: {len(result.pins)} packages pinned with their hashes ({result.digest})")


@cli.command("wheels")
@_MODEL_OPTION
@_ENGINE_OPTION
@click.option(
    "-d",
    "--directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The wheelhouse: created, or an earlier one replaced.",
)
@_PLATFORM_OPTION
@_PYTHON_OPTION
@click.option(
    "--lock",
    "lock_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fill it for this lock (from mlimg lock) rather than resolving one.",
)
@click.option(
    "--build-sdists",
    is_flag=True,
    help="Build here the wheels of packages that publish only source distributions (this "
    "machine must be the image's platform and Python).",
)
@_FULL_MLFLOW_OPTION
@_apply(_INDEX_OPTIONS)
@_reports_errors
def wheels(
    model_uri: str,
    directory: Path,
    platform: str | None,
    python: str | None,
    lock_file: Path | None,
    build_sdists: bool,
    **options: Any,
) -> None:
    """Download every file MODEL's locked environment needs, for builds with no index."""
    with open_model(model_uri) as resolved:
        plan = plan_build(load_local_model(resolved), _options(**options))
        if lock_file is not None:
            locked = lock.read(lock_file)
            lock.check_fits(locked, plan, platform or locked.platform, python)
        else:
            locked = lock.resolve(plan, _say, platform or lock.DEFAULT_PLATFORM, python)
        house = wheelhouse.fill(locked, directory, plan, _say, build_sdists)
    built = f", {len(house.built)} built here" if house.built else ""
    _say(
        f"wrote {house.files} files ({house.size / 1e6:,.0f} MB{built}) and their lock to "
        f"{house.path}"
    )


@cli.command("sbom")
@click.argument("image")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it. Default: standard output.",
)
@_reports_errors
def sbom(image: str, output: Path | None) -> None:
    """Print the CycloneDX SBOM of IMAGE's Python environment (an image mlimg built)."""
    if output is not None and not output.parent.is_dir():
        raise click.BadParameter(f"the directory {output.parent} does not exist", param_hint="'-o'")
    client = daemon.connect()
    labels = daemon.image_labels(client, image)
    if labels is None:
        raise InvalidOption(f"no image {image} in the Docker engine: build or pull it first")
    path = labels.get("mlimg.sbom")
    if not path:
        raise InvalidOption(f"{image} carries no SBOM (no mlimg.sbom label): rebuild it with mlimg")
    content = daemon.image_file(client, image, path)
    if content is None:
        raise InvalidOption(f"{image} has no {path}, which its mlimg.sbom label names")
    if output is None:
        sys.stdout.write(content.decode("utf-8"))
        return
    write_whole(output, content)
    _say(f"wrote {output}: the SBOM of {image} ({len(content):,} bytes)")


def _manifest_options(command: Callable[..., Any]) -> Callable[..., Any]:
    defaults = manifests.ManifestOptions()
    options = [
        click.option(
            "--target",
            "targets",
            multiple=True,
            type=click.Choice(manifests.TARGETS),
            help="What to write, repeated for more: kubernetes (Deployment, Service, "
            "HorizontalPodAutoscaler, PodDisruptionBudget), kserve (an InferenceService), "
            "compose (a compose file for docker stack deploy). Default: kubernetes.",
        ),
        click.option(
            "--name",
            help="The objects' name (lower case, digits, '-'). Default: from the model's name.",
        ),
        click.option(
            "--replicas",
            type=click.IntRange(min=1),
            default=defaults.replicas,
            show_default=True,
            help="Replicas (the autoscaler's floor, when there is one).",
        ),
        click.option(
            "--max-replicas",
            type=click.IntRange(min=1),
            default=defaults.max_replicas,
            show_default=True,
            help="The autoscaler's ceiling.",
        ),
        click.option(
            "--cpu-target",
            type=click.IntRange(1, 100),
            default=defaults.cpu_target,
            show_default=True,
            help="The autoscaler's target CPU utilisation, in percent.",
        ),
        click.option("--no-autoscaler", is_flag=True, help="A fixed number of replicas."),
        click.option("--no-disruption-budget", is_flag=True, help="No PodDisruptionBudget."),
        click.option(
            "--cpu",
            default=defaults.cpu,
            show_default=True,
            help="CPU per replica (request and limit; 1, 0.5, 500m); one worker per whole CPU.",
        ),
        click.option(
            "--memory",
            default=defaults.memory,
            show_default=True,
            help="Memory per replica (request and limit; 2Gi, 512Mi).",
        ),
        click.option(
            "--publish",
            type=click.IntRange(1, 65535),
            default=defaults.publish,
            show_default=True,
            help="compose: the port published on every swarm node.",
        ),
        click.option(
            "--endpoint-mode",
            type=click.Choice(manifests.ENDPOINT_MODES),
            default=defaults.endpoint_mode,
            show_default=True,
            help="compose: vip (the routing mesh) or dnsrr (no published port, for a load "
            "balancer of your own, where the kernel has no IPVS).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _manifest_settings(
    options: dict[str, Any],
) -> tuple[tuple[str, ...], manifests.ManifestOptions]:
    """Take the manifest options out of a command's options: the targets, and how to run."""
    targets = options.pop("targets") or ("kubernetes",)
    chosen = manifests.ManifestOptions(
        name=options.pop("name"),
        replicas=options.pop("replicas"),
        max_replicas=options.pop("max_replicas"),
        cpu_target=options.pop("cpu_target"),
        autoscale=not options.pop("no_autoscaler"),
        disruption_budget=not options.pop("no_disruption_budget"),
        cpu=options.pop("cpu"),
        memory=options.pop("memory"),
        publish=options.pop("publish"),
        endpoint_mode=options.pop("endpoint_mode"),
    )
    manifests.check_options(chosen)
    return targets, chosen


def _write_manifests(
    deployable: manifests.Deployable, targets: tuple[str, ...], output_dir: Path
) -> None:
    for written in manifests.write_manifests(deployable, targets, output_dir):
        _say(f"wrote {written.path} ({written.target}); apply it with: {written.apply}")


@cli.command("build")
@_build_options
@click.option("-t", "--tag", required=True, help="The image's name and tag, e.g. mymodel:1.")
@click.option("--no-smoke-test", is_flag=True, help="Skip running the image after the build.")
@click.option(
    "--smoke-timeout",
    type=click.FloatRange(min=1),
    default=180.0,
    show_default=True,
    help="Seconds the container has to answer /ping.",
)
@click.option("--no-cache", is_flag=True, help="Build every layer anew, ignoring the cache.")
@click.option("-v", "--verbose", is_flag=True, help="Show every line of the build's output.")
@click.option(
    "--push",
    is_flag=True,
    help="Push the image once it has passed its smoke test, to the registry its tag names, "
    "with the credentials of your Docker config (docker login).",
)
@click.option(
    "--manifests",
    "manifests_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Also write deployment manifests into DIR (see generate-manifests), pinned to the "
    "pushed digest with --push.",
)
@_manifest_options
@_reports_errors
def build(
    model_uri: str,
    tag: str,
    no_smoke_test: bool,
    smoke_timeout: float,
    no_cache: bool,
    verbose: bool,
    push: bool,
    manifests_dir: Path | None,
    **options: Any,
) -> None:
    """Build an image for MODEL through the Docker engine, then smoke-test it."""
    targets, manifest_options = _manifest_settings(options)
    settings = BuildSettings(tag, not no_smoke_test, smoke_timeout, no_cache, verbose, push)
    image = build_and_tag(model_uri, _options(**options), settings, _say)
    size = f"{image.size / 1e6:.0f} MB" if image.size is not None else "size unknown"
    reference = image.pushed.pinned if image.pushed else tag
    if manifests_dir is not None:
        engine = serving_engine(image.plan.engine)
        deployable = manifests.Deployable(reference, engine, image.plan.model, manifest_options)
        _write_manifests(deployable, targets, manifests_dir)
    click.echo(f"{tag}: {size}; run it with: docker run -p 5000:8080 {tag}")
    if image.pushed:
        click.echo(image.pushed.pinned)


@cli.command("push")
@click.argument("tag")
@_reports_errors
def push(tag: str) -> None:
    """Push the local image TAG (REGISTRY/NAME:TAG) with the credentials of your Docker config
    (docker login, credential helpers, DOCKER_CONFIG); print REGISTRY/NAME@sha256:..., the
    reference a deployment should pin."""
    daemon.check_pushable(tag)
    pushed = daemon.push_image(daemon.connect(), tag, _say)
    click.echo(pushed.pinned)


@cli.command("generate-manifests")
@_MODEL_OPTION
@click.option(
    "--image",
    required=True,
    metavar="REF",
    help="The image to deploy: REGISTRY/NAME:TAG (pinned to its digest when the local Docker "
    "engine knows one) or REGISTRY/NAME@sha256:...",
)
@click.option(
    "-d",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mlimg-manifests"),
    show_default=True,
    help="Where to write them (one NAME.TARGET.yaml per target).",
)
@click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    help="The image's serving engine. Default: its mlimg.engine label, or mlimg.",
)
@_manifest_options
@_reports_errors
def generate_manifests(
    model_uri: str,
    image: str,
    output_dir: Path,
    engine: str | None,
    **options: Any,
) -> None:
    """Write ready-to-apply manifests that run the image of MODEL: Kubernetes, KServe, compose."""
    targets, manifest_options = _manifest_settings(options)
    with open_model(model_uri) as resolved:
        model = load_local_model(resolved)
    deployable = manifests.deployable(model, image, engine, manifest_options, _say)
    _write_manifests(deployable, targets, output_dir)


@contextlib.contextmanager
def _model_environment(
    model_uri: str, env_manager: str, engine: str = DEFAULT_ENGINE, full_mlflow: bool = False
) -> Iterator[tuple[LocalModel, envs.ModelEnvironment]]:
    """The model (downloaded while in use, if remote) and the environment that runs it."""
    with open_model(model_uri) as resolved:
        model = load_local_model(resolved)
        yield model, envs.prepare_environment(model, env_manager, _say, engine, full_mlflow)


_HOST_ENV_MANAGER = click.option(
    "--env-manager",
    type=click.Choice(list(ENV_MANAGERS)),
    default=DEFAULT_ENV_MANAGER,
    show_default=True,
    help="virtualenv, uv or conda: a cached environment made from the model's own "
    "(conda needs micromamba, mamba or conda on PATH); local: this Python.",
)
_HOST_FULL_MLFLOW_OPTION = click.option(
    "--full-mlflow",
    is_flag=True,
    help="Install the full mlflow package the model pins, as mlimg build --full-mlflow does. "
    "By default the environment gets mlflow-skinny, as the image does, so that the model "
    "answers here as it will in its image (the spark runner always gets full mlflow, which "
    "brings the pyarrow it needs).",
)


@cli.command("serve", context_settings={"help_option_names": ["--help"]})
@_MODEL_OPTION
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("-h", "--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes. Default: the CPUs this machine lets the server use.",
)
@click.option(
    "-t",
    "--timeout",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Seconds a request may take before it is answered 504.",
)
@_HOST_ENV_MANAGER
@_HOST_FULL_MLFLOW_OPTION
@_ENGINE_OPTION
@_reports_errors
def serve(
    model_uri: str,
    port: int,
    host: str,
    workers: int | None,
    timeout: int,
    env_manager: str,
    full_mlflow: bool,
    engine: str,
) -> None:
    """Serve MODEL on this machine with the same server and environment rules as its image."""
    host_runtime.check_port_free(host, port)
    with _model_environment(model_uri, env_manager, engine, full_mlflow) as (model, env):
        _say(f"serving {model_uri} with {engine} on http://{host}:{port} (Ctrl-C stops it)")
        host_runtime.serve(serving_engine(engine), env, model.path, host, port, workers, timeout)


def _spark_conf(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key.strip():
            raise InvalidOption(f"--conf {value!r}: write it KEY=VALUE")
        pairs.append((key.strip(), setting))
    return tuple(pairs)


_LOCAL_CHUNK_ROWS = 10_000


@cli.command("predict")
@_MODEL_OPTION
@click.option(
    "-i",
    "--input-path",
    metavar="INPUT",
    help="A CSV or JSON file (default: standard input). With --runner spark: Parquet or CSV "
    "files, a directory or a glob of them, or a URI Spark reads.",
)
@click.option(
    "-o",
    "--output-path",
    type=click.Path(path_type=Path),
    help="Where predictions go: CSV if the name ends in .csv, else JSON (default: standard "
    "output). With --runner spark: a directory, written whole or not at all.",
)
@click.option(
    "-t",
    "--content-type",
    type=click.Choice(("csv", "json", "parquet")),
    help="The input's format. Default: csv for a .csv input, else json (spark: else parquet).",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    help="Rows read and predicted at a time: what bounds memory on large inputs. Default: "
    f"{_LOCAL_CHUNK_ROWS:,}; with --runner spark, rows per Arrow batch, as many as fit 32 MiB "
    "up to 100,000.",
)
@_HOST_ENV_MANAGER
@_HOST_FULL_MLFLOW_OPTION
@click.option(
    "--runner",
    type=click.Choice(("local", "spark")),
    default="local",
    show_default=True,
    help="local: one process on this machine; spark: a Spark job (needs mlimg[spark] and Java).",
)
@click.option(
    "--master",
    default="local[*]",
    show_default=True,
    help="spark: the Spark master URL (local[N], spark://HOST:PORT, yarn, k8s://...).",
)
@click.option(
    "--conf",
    "spark_conf",
    multiple=True,
    metavar="KEY=VALUE",
    help="spark: a Spark setting, repeated for more (spark.executor.memory=4g).",
)
@click.option(
    "--keep-columns",
    metavar="COLUMNS",
    help="spark: input columns (comma-separated) written beside the predictions, e.g. keys.",
)
@click.option(
    "--output-format",
    type=click.Choice(("parquet", "csv")),
    default="parquet",
    show_default=True,
    help="spark: how the output directory is written.",
)
@_reports_errors
def predict(
    model_uri: str,
    input_path: str | None,
    output_path: Path | None,
    content_type: str | None,
    chunk_rows: int | None,
    env_manager: str,
    full_mlflow: bool,
    runner: str,
    master: str,
    spark_conf: tuple[str, ...],
    keep_columns: str | None,
    output_format: str,
) -> None:
    """Predict on files with MODEL (batch inference), in the model's environment."""
    if runner == "spark":
        _predict_on_spark(
            model_uri, input_path, output_path, content_type, env_manager,
            SparkJob(
                inputs=(input_path,) if input_path else (),
                output=output_path or Path(),
                input_format=content_type,
                output_format=output_format,
                master=master,
                conf=_spark_conf(spark_conf),
                keep_columns=tuple(c.strip() for c in (keep_columns or "").split(",") if c.strip()),
                batch_rows=chunk_rows,
            ),
        )  # fmt: skip
        return
    source = None
    if input_path is not None:
        source = Path(input_path)
        if not source.is_file():
            raise click.BadParameter(f"{input_path!r} is not a file", param_hint="'-i'")
    if content_type is None:
        content_type = "csv" if source and source.suffix.lower() == ".csv" else "json"
    if content_type == "parquet":
        raise click.BadParameter("parquet input needs --runner spark", param_hint="'-t'")
    if output_path is not None and output_path.is_dir():
        raise click.BadParameter(f"'{output_path}' is a directory", param_hint="'-o'")
    chunk_rows = chunk_rows or _LOCAL_CHUNK_ROWS
    with _model_environment(model_uri, env_manager, full_mlflow=full_mlflow) as (model, env):
        code = host_runtime.predict(env, model.path, source, output_path, content_type, chunk_rows)
    if code != 0:
        sys.exit(code)


def _predict_on_spark(
    model_uri: str,
    input_path: str | None,
    output_path: Path | None,
    content_type: str | None,
    env_manager: str,
    job: SparkJob,
) -> None:
    if input_path is None or output_path is None:
        raise InvalidOption("--runner spark reads -i INPUT and writes -o OUTPUT (a directory)")
    if content_type == "json":
        raise InvalidOption("--runner spark reads Parquet or CSV, not JSON")
    spark.check_pyspark()
    spark.check_java()
    spark.check_inputs(job)
    with open_model(model_uri) as resolved:
        summary = spark.run(job, load_local_model(resolved), env_manager, _say)
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    _say(
        f"wrote {summary.rows:,} rows to {summary.output} in {summary.seconds:.1f}s "
        f"({rate:,.0f} rows/s)"
    )


def main() -> None:
    cli(prog_name="mlimg")
