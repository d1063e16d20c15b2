"""Render a transcript as txt, srt, vtt, json or md.

Subtitle output is built to parse with the ``srt`` and ``webvtt-py`` packages: one cue line per
segment, no empty cues, end strictly after start, hours grow past 99 minutes (``01:40:00``) and
past 99 hours, VTT text escaped and speakers as ``<v S1>`` voice tags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from maie.errors import ErrorCode, MaieError
from maie.schemas import Segment

MEDIA_TYPES: dict[str, str] = {
    "txt": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
}
FORMATS = tuple(MEDIA_TYPES)

_SPACE = re.compile(r"\s+")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|])")


def render_results(
    results: dict[str, Any],
    fmt: str,
    *,
    title: str | None = None,
    speaker_names: dict[str, str] | None = None,
) -> tuple[str, str]:
    """``(body, media_type)`` for a task's stored ``results`` (as in the task record); speakers the
    owner renamed (``{"S1": "Diane"}``) appear under their names in every format.

    A text-only task (``/v1/process_text``) has its text and no segments: its text is exported as
    one untimed passage per line (txt, json, md); subtitles need times, so srt/vtt are refused."""
    names = speaker_names or {}
    segments = [Segment.model_validate(s) for s in results.get("segments", [])]
    text = results.get("raw_transcript")
    if not segments and "segments" not in results and text:
        if fmt.lower().lstrip(".") in ("srt", "vtt"):
            raise MaieError(
                ErrorCode.INVALID_FIELD, "a text-only task has no timings for subtitles: use txt, json or md"
            )
        segments = [Segment(start=0.0, end=0.0, text=line) for line in str(text).splitlines() if line.strip()]
    for segment in segments:
        if segment.speaker in names:
            segment.speaker = names[segment.speaker]
            for word in segment.words or []:
                word.speaker = names.get(word.speaker or "", word.speaker)
    return render_transcript(
        segments,
        fmt,
        language=results.get("language"),
        title=title,
        summary=results.get("summary"),
        clean_transcript=results.get("clean_transcript"),
    )


def render_transcript(
    segments: Sequence[Segment],
    fmt: str,
    *,
    language: str | None = None,
    title: str | None = None,
    summary: dict[str, Any] | None = None,
    clean_transcript: str | None = None,
) -> tuple[str, str]:
    """``(body, media_type)`` of the transcript in ``fmt`` (txt | srt | vtt | json | md)."""
    fmt = fmt.lower().lstrip(".")
    renderers = {"txt": _txt, "srt": _srt, "vtt": _vtt}
    if fmt in renderers:
        body = renderers[fmt](segments)
    elif fmt == "json":
        body = _json(segments, language, title, summary, clean_transcript)
    elif fmt == "md":
        body = _md(segments, language, title, summary, clean_transcript)
    else:
        raise MaieError(
            ErrorCode.INVALID_FIELD, f"unknown transcript format {fmt!r}; choose one of: {', '.join(FORMATS)}"
        )
    return body, MEDIA_TYPES[fmt]


def one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def timestamp(seconds: float, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (``.`` for VTT); hours keep growing, never wrap."""
    return _format_ms(round(max(seconds, 0.0) * 1000), sep)


def clock(seconds: float) -> str:
    """``HH:MM:SS`` (hours keep growing)."""
    return timestamp(seconds).split(",")[0]


def _format_ms(total_ms: int, sep: str) -> str:
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _cues(segments: Sequence[Segment]) -> list[tuple[int, int, str, str | None]]:
    """(start_ms, end_ms, text, speaker) of the segments that have text; end > start."""
    cues = []
    for segment in segments:
        text = one_line(segment.text)
        if not text:
            continue
        start = round(max(segment.start, 0.0) * 1000)
        end = max(round(segment.end * 1000), start + 1)
        cues.append((start, end, text, segment.speaker))
    return cues


def _turns(segments: Sequence[Segment]) -> list[tuple[float, str | None, str]]:
    """Consecutive segments of the same speaker joined: (start, speaker, text)."""
    turns: list[tuple[float, str | None, str]] = []
    for segment in segments:
        text = one_line(segment.text)
        if not text:
            continue
        if turns and segment.speaker is not None and turns[-1][1] == segment.speaker:
            start, speaker, previous = turns[-1]
            turns[-1] = (start, speaker, f"{previous} {text}")
        else:
            turns.append((segment.start, segment.speaker, text))
    return turns


def _txt(segments: Sequence[Segment]) -> str:
    lines = [f"{speaker}: {text}" if speaker else text for _, speaker, text in _turns(segments)]
    return "\n".join(lines) + "\n" if lines else ""


def _srt(segments: Sequence[Segment]) -> str:
    blocks = []
    for index, (start, end, text, speaker) in enumerate(_cues(segments), start=1):
        label = f"[{speaker}] " if speaker else ""
        blocks.append(f"{index}\n{_format_ms(start, ',')} --> {_format_ms(end, ',')}\n{label}{text}\n")
    return "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _vtt(segments: Sequence[Segment]) -> str:
    blocks = ["WEBVTT\n"]
    for start, end, text, speaker in _cues(segments):
        voice = ""
        if speaker:
            name = one_line(re.sub(r"[<>&]", "", speaker)) or "speaker"
            voice = f"<v {name}>"
        blocks.append(f"{_format_ms(start, '.')} --> {_format_ms(end, '.')}\n{voice}{_vtt_escape(text)}\n")
    return "\n".join(blocks)


def _json(
    segments: Sequence[Segment],
    language: str | None,
    title: str | None,
    summary: dict[str, Any] | None,
    clean_transcript: str | None,
) -> str:
    data: dict[str, Any] = {"language": language}
    if title:
        data["title"] = title
    data["text"] = " ".join(t for _, _, t in _turns(segments))
    timed = any(s.end > 0 for s in segments)  # a text-only task's lines have no times
    data["segments"] = [s.model_dump(exclude_none=True) for s in segments if s.text.strip()] if timed else []
    if clean_transcript is not None:
        data["clean_transcript"] = clean_transcript
    if summary is not None:
        data["summary"] = summary
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def _heading(key: str) -> str:
    words = str(key).replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def _md_value(value: Any, depth: int = 0) -> list[str]:
    """Markdown lines for one summary value: text as a paragraph, lists and objects as bullets."""
    indent = "  " * depth
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, dict | list):
                lines.append(f"{indent}- **{_md_escape(_heading(key))}:**")
                lines.extend(_md_value(item, depth + 1))
            else:
                lines.append(f"{indent}- **{_md_escape(_heading(key))}:** {_md_escape(_scalar(item))}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict | list):
                nested = _md_value(item, depth + 1)
                if nested:
                    # The first line of the nested block becomes this bullet.
                    lines.append(f"{indent}- {nested[0].lstrip()[2:]}")
                    lines.extend(nested[1:])
            else:
                lines.append(f"{indent}- {_md_escape(_scalar(item))}")
        return lines
    return [f"{indent}{_md_escape(_scalar(value))}"] if depth else [_md_escape(_scalar(value))]


def _scalar(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return one_line(str(value))


def _md(
    segments: Sequence[Segment],
    language: str | None,
    title: str | None,
    summary: dict[str, Any] | None,
    clean_transcript: str | None,
) -> str:
    out = [f"# {_md_escape(one_line(title)) if title else 'Transcript'}", ""]
    facts = []
    if language:
        facts.append(f"Language: {language}")
    timed = any(s.end > 0 for s in segments)  # a text-only task's lines have no times
    if timed:
        facts.append(f"Duration: {clock(max(s.end for s in segments))}")
    if facts:
        out += [" · ".join(facts), ""]
    if summary:
        out += ["## Summary", ""]
        for key, value in summary.items():
            out += [f"### {_md_escape(_heading(key))}", "", *_md_value(value), ""]
    if clean_transcript:
        out += ["## Clean transcript", ""]
        out += [_md_escape(p.strip()) + "\n" for p in clean_transcript.split("\n\n") if p.strip()]
    out += ["## Transcript", ""]
    for start, speaker, text in _turns(segments):
        label = f"{speaker}: " if speaker else ""
        stamp = f"**[{clock(start)}]** " if timed else ""
        out += [f"{stamp}{_md_escape(label + text)}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


FORMATS_WITH_LLM_OUTPUT = ("json", "md")
"""Export formats that already carry the clean transcript and summary."""


def llm_sections(results: dict[str, Any], *, title: str | None = None, warnings: Sequence[str] = ()) -> str:
    """The clean transcript and summary as plain text blocks ("" when neither was produced). With the
    ``ENHANCE_UNCHANGED`` warning code the text is not called clean: it is the raw transcript."""
    out = []
    head = f" · {title}" if title else ""
    if results.get("clean_transcript"):
        name = "Transcript text (clean-up changed nothing)" if "ENHANCE_UNCHANGED" in warnings else "Clean transcript"
        out.append(f"== {name}{head} ==\n{results['clean_transcript'].strip()}\n")
    if results.get("summary") is not None:
        summary = json.dumps(results["summary"], ensure_ascii=False, indent=2)
        out.append(f"== Summary{head} ({results.get('template_id', '')}) ==\n{summary}\n")
    return "\n".join(out) and "\n" + "\n".join(out)
