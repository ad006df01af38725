"""From a model URI to a tagged image, with the build guarantee: an image is tagged only once
it has passed its smoke test; an image that fails it (or a Ctrl-C during it) is removed, its
layers kept as cache, and the tag left as it was. Only a tagged image is pushed.

Callable without the command line: `build_and_tag(uri, BuildOptions(...), BuildSettings(...))`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlimg import daemon, lock, wheelhouse
from mlimg.engines import serving_engine
from mlimg.errors import PushFailed
from mlimg.model import load_local_model
from mlimg.plan import BuildOptions, BuildPlan, plan_build
from mlimg.render import RenderedContext, render_context
from mlimg.smoke import smoke_test
from mlimg.uris import open_model

Report = Callable[[str], None]


@dataclass(frozen=True)
class BuildSettings:
    """How the image is built and checked (BuildOptions says what goes into it)."""

    tag: str
    smoke_test: bool = True
    smoke_timeout: float = 180.0  # seconds the container has to answer /ping
    no_cache: bool = False
    verbose: bool = False  # every line of the build's output, not only its steps
    push: bool = False  # push the tagged image to the registry its tag names


@dataclass(frozen=True)
class TaggedImage:
    tag: str
    image_id: str
    plan: BuildPlan
    size: int | None  # bytes, as the engine reports it
    pushed: daemon.PushedImage | None = None


def write_context(
    model_uri: str,
    options: BuildOptions,
    dest: Path,
    report: Report,
    link_model_files: bool = False,
) -> RenderedContext:
    """Resolve the model (downloading a remote one, removed after), plan, and write the build
    context to `dest`."""
    with open_model(model_uri) as resolved:
        model = load_local_model(resolved)
        plan = plan_build(model, options)
        if plan.ca_cert is not None:
            report(f"trusting the CA bundle {plan.ca_cert} during the build")
        lock_file = options.lock_file
        if options.wheelhouse is not None:
            lock_file = wheelhouse.lock_in(options.wheelhouse)
        plan = lock.locked(plan, lock_file, options.platform, report)
        if options.wheelhouse is not None:
            wheelhouse.check_complete(plan.lock, options.wheelhouse)
            report(f"installing from the wheelhouse {options.wheelhouse}, with no index")
        return render_context(plan, dest, link_model_files=link_model_files)


def build_and_tag(
    model_uri: str, options: BuildOptions, settings: BuildSettings, report: Report
) -> TaggedImage:
    daemon.check_tag(settings.tag)
    if settings.push:
        daemon.check_pushable(settings.tag)
    client = daemon.connect()
    with tempfile.TemporaryDirectory(prefix="mlimg-context-") as tmp:
        context = write_context(model_uri, options, Path(tmp) / "context", report, True)
        plan = context.plan
        daemon.check_platform(client, plan.platform)
        daemon.ensure_base_image(client, plan.base_image, plan.platform, report)
        report(
            f"building {settings.tag} from {plan.model.uri} ({plan.env_manager}, {plan.base_image})"
        )
        built = daemon.build_image(
            client,
            context.path,
            plan.build_args,
            report,
            verbose=settings.verbose,
            no_cache=settings.no_cache,
            # An air-gapped build must not reach out, even by mistake.
            network=None if plan.wheelhouse is None else "none",
        )
    report(
        f"built {built.id[7:19]} in {built.seconds:.1f}s "
        f"({built.cached_steps} of {built.steps} steps from cache)"
    )
    if settings.smoke_test:
        report("smoke test: starting a container")
        try:
            smoke_test(
                client,
                built.id,
                plan.model.serving_example,
                report,
                settings.smoke_timeout,
                kind=plan.model.kind,
                stream=plan.model.streams and serving_engine(plan.engine).streams,
            )
        except BaseException:  # a failure or Ctrl-C: the untested image must not stay
            daemon.remove_image(client, built.id)
            report(
                f"the new image did not pass its smoke test and was removed; {settings.tag} "
                "was not changed"
            )
            raise
    daemon.tag_image(client, built.id, settings.tag)
    size = daemon.image_size(client, settings.tag)
    pushed = None
    if settings.push:
        report(f"pushing {settings.tag}")
        try:
            pushed = daemon.push_image(client, settings.tag, report)
        except PushFailed as exc:
            raise PushFailed(f"{exc} ({settings.tag} is built and tagged here)") from None
    return TaggedImage(settings.tag, built.id, plan, size, pushed)
