"""LLM stages with the embedded SmolLM2-135M-Instruct on transcripts of real audio.

The inputs are Whisper tiny.en's transcripts of ../shared/audio/jfk.flac and
two_speakers_sample.wav (hard-coded so these tests need no ASR), split as tiny.en segmented them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import TaskContext, Transcript
from maie.pipeline.llm import enhance, get_llm, summarize
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.results import build_result
from maie.schemas import Feature, Segment, TaskOptions, TaskStatus
from maie.templates import TemplateStore, schema_validator

JFK = [
    (0.0, 8.0, "And so, my fellow Americans ask not what your country can do for you"),
    (8.0, 11.0, "ask what you can do for your country."),
]
TWO_SPEAKERS = [
    (0.0, 11.8, "hello hello hello I didn't know you were there I need to design I thought you", "S1"),
    (11.8, 16.08, "know I heard a beat this is Diane in New Jersey and I'm Sheila and Texas", "S2"),
    (16.08, 20.88, "originally from Chicago oh I'm originally from Chicago also I'm in New Jersey", "S1"),
    (20.88, 25.52, "now though well there isn't that much difference at least you know they all", "S2"),
    (25.52, 31.8, "call me a Yankee down here so I don't hear that New Jersey now", "S2"),
]
TEMPLATE_IDS = [t.id for t in TemplateStore(Path("/nonexistent")).list()]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1"


def jfk_segments() -> list[Segment]:
    return [Segment(start=a, end=b, text=t) for a, b, t in JFK]


def two_speaker_segments(with_speakers: bool) -> list[Segment]:
    return [Segment(start=a, end=b, text=t, speaker=s if with_speakers else None) for a, b, t, s in TWO_SPEAKERS]


@pytest.fixture(scope="module")
def models() -> ModelRegistry:
    return ModelRegistry()  # one warm model for the whole module, as in a worker


def make_ctx(
    tmp_path: Path,
    models: ModelRegistry,
    segments: list[Segment] | None,
    *,
    text: str | None = None,
    template_id: str | None = None,
    features: tuple[Feature, ...] = (Feature.SUMMARY,),
    **llm: object,
) -> tuple[TaskContext, list[tuple[TaskStatus, float]]]:
    # one thread: CI shares the machine, and idle llama.cpp threads spin-wait
    settings = Settings(data_dir=tmp_path, llm={"n_ctx": 4096, "n_threads": 1, **llm})
    progress: list[tuple[TaskStatus, float]] = []
    transcript = None
    if segments is not None:
        transcript = Transcript(
            segments=segments, language="en", language_probability=1.0, confidence=None, versions={}
        )
    ctx = TaskContext(
        task_id="t1",
        options=TaskOptions(features=list(features), template_id=template_id, text=text),
        settings=settings,
        models=models,
        transcript=transcript,
        report=lambda stage, fraction: progress.append((stage, fraction)),
    )
    return ctx, progress


@pytest.mark.slow
@pytest.mark.parametrize("template_id", TEMPLATE_IDS)
def test_every_builtin_template_gives_a_schema_valid_summary(
    tmp_path: Path, models: ModelRegistry, template_id: str
) -> None:
    schema = TemplateStore(tmp_path).schema(template_id)
    # both recordings, alternating, keep the suite within its time budget
    segments = two_speaker_segments(True) if TEMPLATE_IDS.index(template_id) % 2 else jfk_segments()
    ctx, progress = make_ctx(tmp_path, models, segments, template_id=template_id, sum_max_tokens=512)
    summary = summarize(ctx)
    assert list(schema_validator(schema).iter_errors(summary.data)) == []
    assert list(summary.data) == list(schema["properties"])  # the schema's field order
    assert summary.template_id == template_id
    assert 1 <= summary.attempts <= ctx.settings.llm.sum_max_attempts
    assert summary.usage.model == MODEL_NAME and summary.usage.base_url is None
    assert summary.usage.prompt_tokens > 100 and summary.usage.completion_tokens > 5
    assert summary.usage.params["temperature"] == ctx.settings.llm.sum_temperature
    assert progress[-1] == (TaskStatus.PROCESSING_LLM, 1.0)
    assert models.loads() == 1  # the model stays warm across tasks


@pytest.mark.slow
def test_clean_transcript_is_plain_text(tmp_path: Path, models: ModelRegistry) -> None:
    ctx, _ = make_ctx(tmp_path, models, jfk_segments(), features=(Feature.CLEAN_TRANSCRIPT,))
    result = enhance(ctx)
    assert result.text.strip() and not result.text.lstrip().startswith(("{", "["))
    assert [w.code for w in ctx.warnings] == (["ENHANCE_UNCHANGED"] if result.unchanged else [])
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)
    assert "country" in result.text.lower()
    assert result.chunks == 1 and 0 <= result.chunks_kept_raw <= 1
    assert 0.0 <= result.edit_rate < 1.0
    assert result.usage.model == MODEL_NAME and result.usage.completion_tokens > 0


@pytest.mark.slow
def test_speaker_labels_survive_cleaning(tmp_path: Path, models: ModelRegistry) -> None:
    ctx, _ = make_ctx(tmp_path, models, two_speaker_segments(with_speakers=True), features=(Feature.CLEAN_TRANSCRIPT,))
    result = enhance(ctx)
    labels = [line.split(":", 1)[0] for line in result.text.splitlines()]
    assert labels == ["S1", "S2", "S1", "S2"]  # consecutive S2 segments are one turn


@pytest.mark.slow
def test_a_chunk_cut_off_at_the_token_limit_keeps_its_raw_text(tmp_path: Path, models: ModelRegistry) -> None:
    ctx, _ = make_ctx(
        tmp_path,
        models,
        two_speaker_segments(with_speakers=False),
        features=(Feature.CLEAN_TRANSCRIPT,),
        enhance_max_tokens=16,
        enhance_chunk_chars=150,
    )
    result = enhance(ctx)
    raw = " ".join(t for _, _, t, _ in TWO_SPEAKERS)
    assert result.chunks == result.chunks_kept_raw >= 2
    assert result.text == raw and result.edit_rate == 0.0
    # every chunk kept raw: the task says the "clean" transcript is the raw one
    [warning] = ctx.warnings
    assert warning.code == ErrorCode.ENHANCE_UNCHANGED.value and warning.stage == "PROCESSING_LLM"
    assert f"all {result.chunks} chunks" in warning.message
    ctx.enhancement = result
    out = build_result(ctx, processing_time_s=1.0)
    assert out.results.clean_transcript_unchanged is True
    assert out.results.clean_transcript == raw


@pytest.mark.slow
def test_long_text_is_summarised_map_reduce(tmp_path: Path, models: ModelRegistry) -> None:
    # process_text input (no audio): the two recordings' text, about 1.6 times the chunk size
    lines = [f"{s}: {t}" for _, _, t, s in TWO_SPEAKERS] + [f"S3: {t}" for _, _, t in JFK]
    ctx, progress = make_ctx(
        tmp_path,
        models,
        None,
        text="\n".join(lines * 2)[:800],
        template_id="generic_summary_en_v2",
        sum_chunk_chars=500,
        sum_max_tokens=256,
    )
    summary = summarize(ctx)
    assert summary.usage.params["map_reduce_parts"] == 2
    schema = TemplateStore(tmp_path).schema("generic_summary_en_v2")
    assert list(schema_validator(schema).iter_errors(summary.data)) == []
    fractions = [f for _, f in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_unknown_template_and_missing_model_are_stage_errors(tmp_path: Path, models: ModelRegistry) -> None:
    ctx, _ = make_ctx(tmp_path, models, jfk_segments(), template_id="no_such_template")
    with pytest.raises(MaieError) as exc:
        summarize(ctx)
    assert exc.value.code == ErrorCode.SUMMARY_FAILED
    ctx, _ = make_ctx(tmp_path, ModelRegistry(), jfk_segments(), model=str(tmp_path / "missing.gguf"))
    with pytest.raises(MaieError) as exc:
        get_llm(ctx, "summary")
    assert exc.value.code == ErrorCode.LLM_UNAVAILABLE


def test_silence_gives_an_empty_clean_transcript_without_the_llm(tmp_path: Path) -> None:
    models = ModelRegistry()
    ctx, _ = make_ctx(tmp_path, models, [Segment(start=0, end=1, text="  ")], features=(Feature.CLEAN_TRANSCRIPT,))
    result = enhance(ctx)
    assert result.text == "" and result.chunks == 0 and models.loads() == 0
    with pytest.raises(MaieError) as exc:
        summarize(ctx)
    assert exc.value.code == ErrorCode.SUMMARY_FAILED
