"""Audio of any shape: every channel count decodes (all channels mixed), diarizing by channel is bounded
in channels and memory, and no layout can crash the worker.

The files are built here: JFK on one channel of 8, 9, 16 or 32 (the others silent), in WAV (packed PCM)
and WavPack (planar float, the layout that crashed PyAV), and run through the real decoder and, over HTTP,
the real worker with Whisper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import psutil
import pytest

from maie.errors import ErrorCode, MaieError
from maie.pipeline.audio import decode_file
from maie.pipeline.channels import MAX_CHANNELS
from maie.pipeline.context import SAMPLE_RATE

from service import Service, start_service, wait_terminal

JFK_WORDS = "ask not what your country"


@pytest.fixture(scope="module")
def jfk(shared_audio: Path) -> np.ndarray:
    return decode_file(shared_audio / "jfk.flac").samples


def multichannel(samples: np.ndarray, channels: int, speaker: int) -> np.ndarray:
    """(n, channels) int16: ``samples`` on channel ``speaker``, silence elsewhere."""
    data = np.zeros((len(samples), channels), dtype=np.int16)
    data[:, speaker] = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    return data


def write_wav(path: Path, data: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def write_planar(src: Path, dst: Path, codec: str = "wavpack", fmt: str = "fltp") -> Path:
    """Re-encode ``src`` keeping its channels, as planar samples (one plane per channel)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        layout = inp.streams.audio[0].codec_context.layout
        stream = out.add_stream(codec, rate=SAMPLE_RATE)
        stream.codec_context.layout = layout
        stream.codec_context.format = fmt
        # Packed in, planar out through FFmpeg: PyAV never has to build a planar frame itself.
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=SAMPLE_RATE)
        for frame in inp.decode(audio=0):
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return dst


# -- decoding, in process ------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 7, 8, 9, 16, 32, MAX_CHANNELS])
@pytest.mark.parametrize("speaker", ["first", "last"])
def test_every_channel_is_mixed_in(tmp_path: Path, jfk: np.ndarray, channels: int, speaker: str) -> None:
    index = 0 if speaker == "first" else channels - 1
    path = write_wav(tmp_path / f"c{channels}.wav", multichannel(jfk, channels, index))
    audio = decode_file(path)
    assert audio.source_channels == channels
    assert audio.channel_features is None
    assert abs(len(audio.samples) - len(jfk)) <= SAMPLE_RATE // 100
    # the mix carries the speech 6 dB below the speaking channel, like a stereo mean (a plain mean of
    # N channels would be N times quieter: 30 dB down for 32)
    n = min(len(jfk), len(audio.samples))
    assert np.corrcoef(audio.samples[:n], jfk[:n])[0, 1] > 0.99
    assert abs(np.abs(audio.samples).max() - np.abs(jfk).max() / 2) < 0.01


@pytest.mark.parametrize("channels", [8, 9, 16])
def test_planar_many_channel_sources_decode_without_crashing(tmp_path: Path, jfk: np.ndarray, channels: int) -> None:
    """Decoders with planar output (WavPack, AAC, Vorbis...) hand PyAV one plane per channel; reading 8+
    of them crashed the process. Run in a child so a regression fails the test instead of killing pytest."""
    wav = write_wav(tmp_path / "src.wav", multichannel(jfk[: 3 * SAMPLE_RATE], channels, channels - 1))
    planar = write_planar(wav, tmp_path / f"p{channels}.wv")
    with av.open(str(planar)) as c:
        assert c.streams.audio[0].codec_context.format.is_planar
    code = (
        "import sys, numpy as np; from maie.pipeline.audio import decode_file\n"
        "for keep in (False, True):\n"
        "    a = decode_file(sys.argv[1], keep_channels=keep, max_channels=64)\n"
        "    print(keep, a.source_channels, len(a.samples), float(np.abs(a.samples).max()))\n"
    )
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code, str(planar)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for line in run.stdout.splitlines():
        _, got_channels, n, peak = line.split()
        assert int(got_channels) == channels and int(n) == 3 * SAMPLE_RATE and float(peak) > 0.3, line


def test_channel_features_find_the_speaking_channel(tmp_path: Path, jfk: np.ndarray) -> None:
    from maie.pipeline.diarization.channels import channel_turns

    path = write_wav(tmp_path / "c8.wav", multichannel(jfk, 8, 5))
    audio = decode_file(path, keep_channels=True, max_channels=16)
    features = audio.channel_features
    assert features is not None and features.speech is not None
    assert features.energy_db.shape == features.speech.shape == (8, len(audio.samples) // 480)
    turns = channel_turns(features, floor_db=30.0, dominance_db=15.0, min_gap_s=0.2)
    assert turns and {c for _, _, c in turns} == {5}
    assert sum(e - s for s, e, _ in turns) > 5.0


def test_channel_limits_are_clear_failures(tmp_path: Path, jfk: np.ndarray) -> None:
    path = write_wav(tmp_path / "c32.wav", multichannel(jfk[:SAMPLE_RATE], 32, 3))
    with pytest.raises(MaieError) as exc:
        decode_file(path, keep_channels=True, max_channels=16)
    assert exc.value.code == ErrorCode.AUDIO_TOO_MANY_CHANNELS and "16" in exc.value.message
    too_many = write_wav(tmp_path / "c65.wav", multichannel(jfk[:SAMPLE_RATE], MAX_CHANNELS + 1, 0))
    with pytest.raises(MaieError) as exc:
        decode_file(too_many)
    assert exc.value.code == ErrorCode.AUDIO_TOO_MANY_CHANNELS


# -- memory: the duration, not channels x duration ------------------------------------------------

# VmHWM, not ru_maxrss: the latter is inherited through fork + exec from the (large) pytest process.
_PEAK_RSS = (
    "import re, sys\n"
    "from maie.pipeline.audio import decode_file\n"
    "a = decode_file(sys.argv[1], keep_channels=True, max_channels=16)\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
    "print(int(hwm) * 1024, a.samples.nbytes)\n"
)


def _peak_rss(path: Path) -> tuple[int, int]:
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True, text=True, check=True)
    rss, nbytes = run.stdout.split()
    return int(rss), int(nbytes)


def test_by_channel_memory_follows_the_duration(tmp_path: Path, jfk: np.ndarray) -> None:
    minutes = 8
    long = np.tile(jfk, int(minutes * 60 * SAMPLE_RATE / len(jfk)) + 1)[: minutes * 60 * SAMPLE_RATE]
    mono = write_wav(tmp_path / "mono.wav", multichannel(long, 1, 0))
    seven = write_wav(tmp_path / "seven.wav", multichannel(long, 7, 6))
    tiny = write_wav(tmp_path / "tiny.wav", multichannel(jfk[:SAMPLE_RATE], 7, 6))
    base, _ = _peak_rss(tiny)  # interpreter, numpy, PyAV, webrtcvad
    rss_mono, nbytes = _peak_rss(mono)
    rss_seven, nbytes_seven = _peak_rss(seven)
    assert nbytes == nbytes_seven == minutes * 60 * SAMPLE_RATE * 4
    grown_mono, grown_seven = rss_mono - base, rss_seven - base
    print(f"peak RSS above baseline: mono {grown_mono / 2**20:.0f} MiB, 7 channels {grown_seven / 2**20:.0f} MiB")
    # Keeping the 7 channels as float32 would add 7 x 31 MiB; the features add under 1 MiB.
    assert grown_seven < 1.5 * grown_mono + 16 * 2**20, (grown_mono, grown_seven)


# -- the real worker, over HTTP -------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("shapes") / "data")
    try:
        svc.wait_ready()
        yield svc
    finally:
        svc.stop()


def _worker_pids(service: Service) -> set[int]:
    return {p.pid for p in service.children() if "worker" in " ".join(p.cmdline())}


def test_many_channels_transcribe_jfk_in_the_worker(service: Service, tmp_path: Path, jfk: np.ndarray) -> None:
    workers = _worker_pids(service)
    assert workers
    files = {
        "c9.wav": write_wav(tmp_path / "c9.wav", multichannel(jfk, 9, 4)),
        "c16.wav": write_wav(tmp_path / "c16.wav", multichannel(jfk, 16, 15)),
        "c32.wav": write_wav(tmp_path / "c32.wav", multichannel(jfk, 32, 0)),
    }
    files["p16.wv"] = write_planar(files["c16.wav"], tmp_path / "p16.wv")
    with service.client() as client:
        ids = {}
        for name, path in files.items():
            r = client.post(
                "/v1/process", data={"features": "raw_transcript"}, files={"file": (name, path.read_bytes())}
            )
            assert r.status_code == 202, r.text
            ids[name] = r.json()["task_id"]
        for name, task_id in ids.items():
            record = wait_terminal(client, task_id)
            assert record["status"] == "COMPLETE", (name, record.get("error"))
            assert JFK_WORDS in record["results"]["raw_transcript"].lower(), (name, record["results"])
    assert _worker_pids(service) == workers, "a worker died"


def test_by_channel_diarization_of_eight_channels_completes(service: Service, tmp_path: Path, jfk: np.ndarray) -> None:
    """The SIGSEGV case: 8 channels with diarize_by_channel=true killed the worker twice (WORKER_LOST)."""
    workers = _worker_pids(service)
    silence = np.zeros(len(jfk), np.float32)
    data = multichannel(np.concatenate([jfk, silence]), 8, 2)  # one speaker, then a second one
    data[:, 6] = multichannel(np.concatenate([silence, jfk * 0.5]), 1, 0)[:, 0]
    path = write_wav(tmp_path / "c8.wav", data)
    fields = {"features": "raw_transcript", "enable_diarization": "true", "diarize_by_channel": "true"}
    with service.client() as client:
        r = client.post("/v1/process", data=fields, files={"file": ("c8.wav", path.read_bytes())})
        assert r.status_code == 202, r.text
        record = wait_terminal(client, r.json()["task_id"])
    assert record["status"] == "COMPLETE", record.get("error")
    assert JFK_WORDS in record["results"]["raw_transcript"].lower()
    assert {w["code"] for w in record.get("warnings") or []}.isdisjoint({"DIARIZATION_FAILED"}), record["warnings"]
    assert len(record["results"]["speakers"]) == 2, record["results"]["speakers"]
    assert _worker_pids(service) == workers, "the worker died"


def test_too_many_channels_for_by_channel_is_refused_at_submit(
    service: Service, tmp_path: Path, jfk: np.ndarray
) -> None:
    path = write_wav(tmp_path / "c32.wav", multichannel(jfk[: 2 * SAMPLE_RATE], 32, 0))
    fields = {"features": "raw_transcript", "enable_diarization": "true", "diarize_by_channel": "true"}
    with service.client() as client:
        r = client.post("/v1/process", data=fields, files={"file": ("c32.wav", path.read_bytes())})
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "AUDIO_TOO_MANY_CHANNELS"
        assert "16" in r.json()["detail"]
        # without by-channel diarization the same file is fine
        r = client.post(
            "/v1/process", data={"features": "raw_transcript"}, files={"file": ("c32.wav", path.read_bytes())}
        )
        assert r.status_code == 202, r.text
        assert wait_terminal(client, r.json()["task_id"])["status"] == "COMPLETE"
    audio_root = service.data_dir / "audio"
    assert len(list(audio_root.iterdir())) >= 1  # the accepted one; the refused one left nothing


# -- decoding in a child process ------------------------------------------------------------------

# A decoder that dies of a native crash as it starts on the file. PyAV once did this itself on planar
# 8-channel output read through its frame planes (one reason decoding runs in a child); PyAV 18.1.1 no
# longer crashes there, so the crash is made on purpose: the test is about the worker, not PyAV.
_CRASH = """
import ctypes, json, sys
json.loads(sys.stdin.readline())
ctypes.string_at(0)
"""


def test_a_decoder_crash_costs_the_task_not_the_worker(
    tmp_path: Path, jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maie.pipeline import decode_child

    path = write_wav(tmp_path / "c8.wav", multichannel(jfk[: 2 * SAMPLE_RATE], 8, 7))
    monkeypatch.setattr(decode_child, "CHILD_COMMAND", [sys.executable, "-c", _CRASH])
    with pytest.raises(MaieError) as exc:
        decode_child.decode_isolated(path, keep_channels=True)
    assert exc.value.code == ErrorCode.AUDIO_DECODE_ERROR
    assert "SIGSEGV" in exc.value.message, exc.value.message


def test_child_decode_matches_in_process(tmp_path: Path, jfk: np.ndarray) -> None:
    from maie.pipeline.decode_child import decode_isolated

    path = write_wav(tmp_path / "c8.wav", multichannel(jfk, 8, 3))
    seen: list[float] = []
    child = decode_isolated(path, keep_channels=True, max_channels=16, on_progress=seen.append)
    here = decode_file(path, keep_channels=True, max_channels=16)
    np.testing.assert_array_equal(child.samples, here.samples)
    assert child.channel_features is not None and here.channel_features is not None
    np.testing.assert_array_equal(child.channel_features.energy_db, here.channel_features.energy_db)
    np.testing.assert_array_equal(child.channel_features.speech, here.channel_features.speech)
    assert (child.duration_s, child.source_channels, child.source_format) == (
        here.duration_s,
        here.source_channels,
        here.source_format,
    )
    assert seen and seen == sorted(seen)
    with pytest.raises(MaieError) as exc:  # the child's MaieErrors come back with their code
        decode_isolated(path, keep_channels=True, max_channels=4)
    assert exc.value.code == ErrorCode.AUDIO_TOO_MANY_CHANNELS


def test_cancelling_kills_the_child(tmp_path: Path, jfk: np.ndarray) -> None:
    from maie.pipeline.decode_child import decode_isolated

    long = np.tile(jfk, 30)
    path = write_wav(tmp_path / "long.wav", multichannel(long, 1, 0))

    class Stop(BaseException):
        pass

    def stop(_: float) -> None:
        raise Stop

    children = set(psutil.Process().children())
    with pytest.raises(Stop):
        decode_isolated(path, on_progress=stop)
    assert set(psutil.Process().children()) <= children  # the child was killed and reaped


def test_the_next_files_child_waits_with_its_imports_done(tmp_path: Path, jfk: np.ndarray) -> None:
    from maie.pipeline import decode_child

    path = write_wav(tmp_path / "one.wav", multichannel(jfk[: 3 * SAMPLE_RATE], 1, 0))
    decode_child.decode_isolated(path)
    spare = decode_child.SPARE._proc
    assert spare is not None and spare.poll() is None  # started after the decode, waiting on stdin
    child = psutil.Process(spare.pid)
    deadline = time.monotonic() + 30
    while "numpy" not in " ".join(m.path for m in child.memory_maps()) and time.monotonic() < deadline:
        time.sleep(0.05)  # its imports run ahead of the request
    assert "numpy" in " ".join(m.path for m in child.memory_maps())
    again = decode_child.decode_isolated(path)
    assert spare.poll() == 0  # that child decoded this file and exited
    assert again.duration_s == pytest.approx(3.0, abs=0.01)
    replacement = decode_child.SPARE._proc
    assert replacement is not None and replacement.pid != spare.pid and replacement.poll() is None
    decode_child.SPARE.drop()
    assert replacement.poll() is not None


def test_a_waiting_child_that_died_does_not_fail_the_next_file(tmp_path: Path, jfk: np.ndarray) -> None:
    from maie.pipeline import decode_child

    path = write_wav(tmp_path / "one.wav", multichannel(jfk[: 2 * SAMPLE_RATE], 1, 0))
    decode_child.decode_isolated(path)
    spare = decode_child.SPARE._proc
    assert spare is not None
    spare.kill()  # the OOM killer, or an operator, between two tasks
    spare.wait()
    assert decode_child.decode_isolated(path).duration_s == pytest.approx(2.0, abs=0.01)
    # and one killed after the liveness check, as the request is written
    waiting = decode_child.SPARE._proc
    assert waiting is not None
    waiting.kill()
    waiting.wait()
    fresh = decode_child._hand_over(waiting, json.dumps({"path": str(path), "options": {}}))
    assert fresh is not waiting and fresh.poll() is None
    decode_child._reap(fresh)
    decode_child.SPARE.drop()
