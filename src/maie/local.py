"""``maie process``: the same pipeline, in this process, with a progress bar per stage."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from maie.api.options import check_options, parse_features
from maie.config import Settings
from maie.errors import MaieError
from maie.exports import FORMATS_WITH_LLM_OUTPUT, llm_sections, render_results
from maie.logs import tqdm_logging
from maie.pipeline.context import TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.run import run_pipeline
from maie.schemas import TaskOptions, TaskStatus


class StageBars:
    """One tqdm bar per stage, counted in audio seconds once the duration is known."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: tqdm | None = None
        self.stage: TaskStatus | None = None
        self.ctx: TaskContext | None = None

    def __call__(self, stage: TaskStatus, fraction: float) -> None:
        if stage != self.stage:
            self.close()
            audio = self.ctx.audio if self.ctx else None
            total = round(audio.duration_s, 1) if audio is not None else 100.0
            unit = "s" if audio is not None else "%"
            self.bar = tqdm(
                total=total,
                desc=f"{self.name}: {stage.value.lower()}",
                unit=unit,
                leave=False,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f}{unit}",
            )
            self.stage = stage
        assert self.bar is not None
        self.bar.n = round(min(max(fraction, 0.0), 1.0) * self.bar.total, 1)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None


def process_files(
    settings: Settings,
    files: list[Path],
    *,
    features: str,
    fmt: str,
    output_dir: Path | None,
    template_id: str | None,
    language: str | None,
    word_timestamps: bool,
    diarize: bool,
) -> int:
    """Returns the exit code: 0 when every file succeeded, 1 otherwise, 2 when the options cannot run
    here (refused before any file is read)."""
    try:
        options = check_options(
            TaskOptions(
                features=parse_features([features]),
                template_id=template_id,
                language=language,
                word_timestamps=word_timestamps,
                enable_diarization=diarize,
            ),
            settings,
        )
    except MaieError as exc:
        print(f"maie: {exc.message} ({exc.code.value})", file=sys.stderr)
        return 2
    models = ModelRegistry()
    failures = 0
    # Log lines (model loading, warnings) go through tqdm.write, above the bars, not through them.
    with tqdm_logging():
        for path in files:
            failures += _process_one(settings, models, options, path, fmt, output_dir)
    return 1 if failures else 0


def _process_one(
    settings: Settings, models: ModelRegistry, options: TaskOptions, path: Path, fmt: str, output_dir: Path | None
) -> int:
    bars = StageBars(path.name)
    ctx = TaskContext(
        task_id=path.stem,
        options=options.model_copy(deep=True),
        settings=settings,
        models=models,
        audio_path=path,
        report=bars,
    )
    bars.ctx = ctx
    try:
        result = run_pipeline(ctx)
    except MaieError as exc:
        bars.close()
        tqdm.write(f"{path}: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 1
    bars.close()
    for warning in result.warnings:
        tqdm.write(f"{path}: warning {warning.code}: {warning.message}", file=sys.stderr)
    # As the task record has them (the parts' keys as built, see maie.schemas).
    results = result.results.model_dump(exclude_unset=True)
    codes = [w.code for w in result.warnings]
    if fmt == "json":
        metrics, versions = (part.model_dump(exclude_unset=True) for part in (result.metrics, result.versions))
        body = json.dumps(
            {"file": str(path), "results": results, "metrics": metrics, "versions": versions},
            ensure_ascii=False,
            indent=2,
        )
    else:
        body, _ = render_results(results, fmt, title=path.name)
    if output_dir is None:
        sys.stdout.write(body if body.endswith("\n") else body + "\n")
        if fmt not in FORMATS_WITH_LLM_OUTPUT:
            sys.stdout.write(llm_sections(results, warnings=codes))
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        out = output_dir / f"{path.stem}.{fmt}"
        out.write_text(body, encoding="utf-8")
        # Asked-for clean transcript and summary are shown, whatever the transcript's format.
        sys.stdout.write(llm_sections(results, title=path.name, warnings=codes))
        m = result.metrics
        tqdm.write(f"{path.name} -> {out}  ({m.input_duration_s or 0:.1f}s audio, rtf {m.rtf})", file=sys.stderr)
    sys.stdout.flush()
    return 0
