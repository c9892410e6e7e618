"""Workspace steps that run like make: skipped while their inputs (sha256) and options are those
recorded in the manifest for an output that is still intact."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggufkit.core.errors import InputError, WorkspaceError
from ggufkit.core.fsutil import locked
from ggufkit.core.log import get_logger
from ggufkit.hub import ResolvedModel, cached_model, looks_like_repo_id, resolve_model
from ggufkit.workspace.adapter import adapter_dir, adapter_inputs
from ggufkit.workspace.config import CONFIG_NAME, WorkspaceConfig
from ggufkit.workspace.convert_engine import USED, chosen_engine, engine_options, engine_ran
from ggufkit.workspace.manifest import (
    MANIFEST_NAME,
    Manifest,
    describe_output,
    file_input,
    fingerprint,
    model_input,
    now_iso,
    record_artefact,
    remove_other_forms,
)
from ggufkit.workspace.recorded import convert_command, quantize_command
from ggufkit.workspace.step_results import STATE_REASONS, StepResult, StepState, jsonable
from ggufkit.workspace.vision_step import mmproj_options, mmproj_stale, mmproj_type, record_mmproj

if TYPE_CHECKING:
    from ggufkit.formats.gguf_split import SplitLimits
    from ggufkit.quantize import QuantizeOptions
    from ggufkit.quantize.engines import Engine

log = get_logger("workspace")

LOCK_NAME = ".ggufkit.lock"


@dataclass
class Workspace:
    root: Path
    config: WorkspaceConfig
    # False: no workspace lock; the caller (``ggufkit batch``) locks each output instead, so that
    # steps of one model run at once in several processes or on several nodes.
    exclusive: bool = True
    _lock_depth: int = field(default=0, init=False, repr=False)

    @classmethod
    def find(cls, start: Path | None = None) -> Workspace | None:
        """The workspace whose ggufkit.toml is in ``start`` (default: cwd) or a parent of it."""
        here = (start or Path.cwd()).absolute()
        for directory in (here, *here.parents):
            if (directory / CONFIG_NAME).is_file():
                return cls(directory, WorkspaceConfig.from_toml(directory / CONFIG_NAME))
        return None

    @classmethod
    def require(cls, start: Path | None = None, *, takes_model: bool = True) -> Workspace:
        """The workspace here; ``takes_model``: the command could have been given a model
        instead (status and publish cannot)."""
        workspace = cls.find(start)
        if workspace is None:
            where = (start or Path.cwd()).absolute()
            first = "no model given, and no" if takes_model else "no"
            instead = "give the model (see --help)" if takes_model else "cd into a workspace"
            raise WorkspaceError(
                f"{first} {CONFIG_NAME} in {where} or its parents (a workspace)",
                hint=f"{instead}, or set one up here with `ggufkit init SOURCE`",
            )
        return workspace

    # -- paths ----------------------------------------------------------------------------------
    @property
    def outdir(self) -> Path:
        return self.root / self.config.outdir

    @property
    def manifest_path(self) -> Path:
        return self.outdir / MANIFEST_NAME

    @property
    def f16_path(self) -> Path:
        """The converted file: ``<outdir>/<name>-<OUTTYPE>.gguf`` (F16 by default), named as
        ``convert`` and llama.cpp name it."""
        return self.outdir / f"{self.config.name}-{self.config.outtype.upper()}.gguf"

    def quantized_path(self, qtype: str) -> Path:
        return self.outdir / f"{self.config.name}-{qtype.upper()}.gguf"

    def built(self, path: Path) -> Path:
        """``path``, or the first shard of the split set a step made in its place."""
        from ggufkit.formats.gguf_split import built_form

        return built_form(path)

    def split(self) -> tuple[SplitLimits, list[str]]:
        """ggufkit.toml's ``split_max_size``, and the options that record it (none: unsplit)."""
        from ggufkit.formats.gguf_split import split_limits

        limits = split_limits(self.config.split_max_size, None)
        return limits, limits.tool_args() if limits.active else []

    def relative(self, path: Path) -> str:
        return (
            path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
        )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The workspace lock: re-entrant within this object, refused at once to another run."""
        if not self.exclusive:
            yield
            return
        if self._lock_depth == 0:
            with locked(self.root / LOCK_NAME, what=f"the workspace {self.root}", timeout=0):
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
            return
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1

    # -- models ---------------------------------------------------------------------------------
    def _local_or_hub(self, ref: str) -> Path | str:
        local = self.root / ref
        if local.is_dir():
            return local
        if looks_like_repo_id(ref):
            return ref
        raise InputError(
            f"{ref} (in {self.root / CONFIG_NAME}): no such directory, and not a Hub id",
            hint=f"fix `source` / `delta_base` in {CONFIG_NAME}",
        )

    def source(self) -> ResolvedModel:
        """The model directory, downloaded first for a Hub source."""
        ref = self._local_or_hub(self.config.source)
        return resolve_model(ref, revision=self.config.revision if isinstance(ref, str) else None)

    def delta_base(self) -> ResolvedModel | None:
        base = self.config.delta_base
        return None if base is None else resolve_model(self._local_or_hub(base))

    def cached(self, ref: str | None, revision: str | None = None) -> ResolvedModel | None:
        """A source as it is on disk now (None: a Hub model not downloaded); no network."""
        if ref is None:
            return None
        where = self._local_or_hub(ref)
        return (
            resolve_model(where)
            if isinstance(where, Path)
            else cached_model(where, revision=revision)
        )

    # -- the step runner ------------------------------------------------------------------------
    def run_step(
        self,
        step: str,
        output: Path,
        *,
        inputs: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any],
        command: Sequence[str],
        action: Callable[[], object],
        force: bool = False,
    ) -> StepResult:
        """Run ``action`` (it writes ``output``) unless the manifest shows ``output`` up to date,
        then record it; what ``action`` returns is kept as the record's ``result``."""
        planned = output
        output = self.built(planned)
        with self.lock():
            state = self.state_of(step, output, inputs, options, Manifest.load(self.manifest_path))
            if state.state == "up to date" and not force:
                log.info("%s: up to date (skipped) %s", step, self.relative(output))
                return StepResult(step, output, skipped=True)
            why = (
                "--force"
                if state.state == "up to date"
                else STATE_REASONS.get(state.state, state.state)
            )
            log.info("%s: building %s (%s)", step, self.relative(output), why)
            started, clock = now_iso(), time.perf_counter()
            result = action()
            seconds = time.perf_counter() - clock
            produced = getattr(result, "output", None)  # a split set's first shard
            output = Path(produced) if isinstance(produced, (str, Path)) else planned
            remove_other_forms(self.manifest_path, planned, output)
            if not output.exists():
                raise WorkspaceError(
                    f"{step} finished without writing {output}", hint="report this bug"
                )
            record_artefact(
                self.manifest_path,
                output,
                step=step,
                inputs=inputs,
                options=options,
                command=command,
                seconds=seconds,
                started=started,
                extra=None if result is None else {"result": jsonable(result)},
            )
            return StepResult(step, output, skipped=False, seconds=seconds)

    def state_of(
        self,
        step: str,
        output: Path,
        inputs: Sequence[Mapping[str, Any]] | None,
        options: Mapping[str, Any],
        manifest: Manifest,
    ) -> StepState:
        record = manifest.get(output)
        if not output.exists():
            state = "missing"
        elif record is None:
            state = "not recorded"
        elif output.is_file() and describe_output(output)["sha256"] != record.get("sha256"):
            state = "modified"
        elif inputs is None:
            state = "unknown"  # e.g. a Hub source that is not downloaded
        elif fingerprint(step, inputs, options) != record.get("fingerprint"):
            state = "out of date"
        else:
            state = "up to date"
        return StepState(step, output, state, record)

    # -- the pipeline ---------------------------------------------------------------------------
    def convert_inputs(
        self, model: ResolvedModel, base: ResolvedModel | None
    ) -> list[dict[str, Any]]:
        inputs = [model_input(model)] if base is None else [model_input(base, role="base")]
        inputs += [model_input(model, role="delta")] if base is not None else []
        return inputs + adapter_inputs(self.root, self.config.lora)

    def _convert_record(self, manifest: Manifest | None = None) -> dict[str, Any] | None:
        return (manifest or Manifest.load(self.manifest_path)).get(self.built(self.f16_path))

    def convert_engine(self, given: str | None = None, manifest: Manifest | None = None) -> str:
        """The convert step's engine (:func:`~ggufkit.workspace.convert_engine.chosen_engine`)."""
        return chosen_engine(given, self.config.engine, self._convert_record(manifest))

    def convert_options(self, engine: str, manifest: Manifest | None = None) -> dict[str, Any]:
        """What the convert step's fingerprint counts besides its inputs (the engine that ran
        included, for ``auto``)."""
        options: dict[str, Any] = {"outtype": self.config.outtype} | mmproj_options(self.config)
        options |= engine_options(engine, self._convert_record(manifest))
        split_args = self.split()[1]
        return options | ({"split": split_args} if split_args else {})

    def convert(
        self,
        *,
        force: bool = False,
        engine: str | None = None,
        threads: int | None = None,
        chat_template: str | None = None,
    ) -> StepResult:
        """Download (if needed) and convert the source to ``f16_path`` (a split set when
        ggufkit.toml sets ``split_max_size``); a delta is merged on the fly. ``engine`` (the
        command line's) overrides ggufkit.toml's; see :meth:`convert_engine`."""
        with self.lock():
            model, base = self.source(), self.delta_base()
            lora = adapter_dir(self.root, self.config.lora)
            engine = self.convert_engine(engine)
            options = self.convert_options(engine)
            chat_template = chat_template or self.config.chat_template
            if chat_template is not None:
                options["chat_template"] = chat_template
            split = self.split()[0]
            describe = base.describe() if base is not None else None
            adapter = self.relative(lora) if lora is not None else None
            command = convert_command(
                self, model.describe(), describe, engine, chat_template, adapter
            )

            def action() -> object:
                from ggufkit.convert import convert

                done = convert(
                    model.path,
                    self.f16_path,
                    outtype=self.config.outtype,
                    delta_base=base.path if base is not None else None,
                    lora=lora,
                    engine=engine,
                    threads=threads,
                    force=True,
                    chat_template=chat_template or "auto",
                    split=split,
                    mmproj_outtype=mmproj_type(self.config),
                )
                if engine == "auto":  # auto's choice joins the options run_step records next
                    options.pop(USED, None)
                    if (ran := engine_ran(done)) is not None:
                        options[USED] = ran
                return done

            inputs = self.convert_inputs(model, base)
            step = self.run_step("convert", self.f16_path, inputs=inputs, options=options,
                                 command=command, action=action, force=force or mmproj_stale(self))  # fmt: skip
            record_mmproj(self, step, inputs, command)  # a vision-language model's projector
            return step

    def quantize(
        self,
        types: Sequence[str] | None = None,
        *,
        force: bool = False,
        options: QuantizeOptions | None = None,
    ) -> list[StepResult]:
        """Bring the converted file up to date, then make one quantized file per type (each a
        split set when ggufkit.toml sets ``split_max_size``)."""
        with self.lock():
            self.convert()
            table = self.config.imatrix
            if table is not None and (options is None or options.imatrix is None):
                from ggufkit.quantize import QuantizeOptions
                from ggufkit.workspace.imatrix_step import imatrix_path, make_imatrix

                make_imatrix(self, table, self.root / table.corpus if table.corpus else None)
                options = dataclasses.replace(
                    options or QuantizeOptions(), imatrix=imatrix_path(self)
                )
            return [
                self.quantize_type(qtype, force=force, options=options)
                for qtype in types or self.config.types
            ]

    def quantize_type(
        self,
        qtype: str,
        *,
        force: bool = False,
        options: QuantizeOptions | None = None,
        engine: Engine | None = None,
    ) -> StepResult:
        """One quantized file from the converted file as it is (not brought up to date first)."""
        from ggufkit.quantize import QuantizeOptions

        options = options or QuantizeOptions()
        # The flags that change the bytes; the imatrix is an input (by sha256), not a path.
        flags = dataclasses.replace(options, imatrix=None, threads=None).binary_flags()
        source = self.built(self.f16_path)
        split, split_args = self.split()
        output = self.quantized_path(qtype)
        inputs = [file_input(source)]
        if options.imatrix is not None:
            inputs.append(file_input(Path(options.imatrix), role="imatrix"))
        settings = {"type": qtype, **({"flags": flags} if flags else {})}
        settings.update({"split": split_args} if split_args else {})
        command = quantize_command(self, source, qtype, output, options)

        def action() -> object:
            from ggufkit.quantize import quantize

            done = quantize(
                source,
                [qtype],
                output=output,
                options=options,
                engine=engine,
                split=split,
                force=True,  # the step decides: it runs when its output is out of date
            )
            return done[0]

        with self.lock():
            return self.run_step(
                "quantize",
                output,
                inputs=inputs,
                options=settings,
                command=command,
                action=action,
                force=force,
            )

    def status(self) -> list[StepState]:
        """Each step's output and whether it is up to date; downloads and builds nothing."""
        from ggufkit.workspace.status import step_states

        return step_states(self)
