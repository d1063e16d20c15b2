"""ChunkFormer ASR backend: long-form CTC recognition (e.g. the Vietnamese ``khanhld/chunkformer-large-vie``).

A checkpoint is a local directory in the ``chunkformer`` package's format: ``config.yaml``,
``pytorch_model.bin`` (or ``.pt``/``.ckpt``), ``vocab.txt`` and, usually, ``global_cmvn``.

Only the package's model classes are used. Its top-level ``__init__`` imports the Hugging Face wrapper
(transformers, torchaudio, pydub, pandas, jiwer...) that reads audio files, none of which decoding
samples needs, so the submodules are imported without running it and the Kaldi filterbank features are
computed here with torch. The decoding itself follows the package's ``batch_decode`` (short speech
regions packed into one masked batch) and ``endless_decode`` (a long region in passes that carry
attention and convolution caches).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr.backend import AsrRequest, LoadedModel
from maie.pipeline.context import SAMPLE_RATE, Transcript
from maie.schemas import Segment

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'maie[chunkformer]' && pip install --no-deps 'chunkformer==1.2.2'"
CHECKPOINT_NAMES = ("pytorch_model.bin", "pytorch_model.pt", "pytorch_model.ckpt")
PACKAGE_BATCH_FRAMES = 89_999
"""Input frames per forward pass behind the package's default ``total_batch_duration=1800``."""
ONSET_FRAMES = 2
"""CTC spikes come after a token's onset: segment starts move back this many encoder frames, as the
package's timestamps do."""
FBANK_BLOCK_FRAMES = 60_000
"""Filterbank frames computed at once (10 minutes at 10 ms), bounding memory on long audio."""
_SPECIAL_TOKEN = re.compile(r"^<[^<>]+>$")


@dataclass(frozen=True)
class FbankConfig:
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0


@dataclass
class ChunkFormerCtc:
    """A loaded CTC checkpoint: the encoder and CTC head, without the attention decoder."""

    encoder: Any
    ctc: Any
    vocab: dict[int, str]
    blank_id: int
    fbank: FbankConfig
    device: torch.device
    model_dir: str

    @property
    def frame_s(self) -> float:
        """Seconds per encoder (CTC) frame."""
        return float(self.fbank.frame_shift_ms / 1000 * self.encoder.embed.subsampling_rate)


@dataclass(frozen=True)
class Decoding:
    chunk_size: int
    left_context: int
    right_context: int
    batch_size: int
    """Chunks per forward pass."""


@dataclass(frozen=True)
class ChunkFormerSpec:
    """What to load and how to decode, from the settings alone; ``key`` is the ModelRegistry key."""

    model_dir: str
    device: str
    chunk_size: int
    left_context: int
    right_context: int
    batch_size: int | None
    max_silence_s: float

    @property
    def key(self) -> tuple[str, str, str]:
        return ("chunkformer", self.model_dir, self.device)

    @property
    def label(self) -> str:
        return self.model_dir


def resolve_spec(settings: Settings) -> ChunkFormerSpec:
    asr = settings.asr
    if not asr.chunkformer_model:
        raise MaieError(
            ErrorCode.MODEL_UNAVAILABLE,
            "No ChunkFormer model is configured: set MAIE_ASR__CHUNKFORMER_MODEL to a local checkpoint "
            f"directory (config.yaml, pytorch_model.bin, vocab.txt) and install the backend ({INSTALL_HINT}).",
        )
    torch = _import_torch()
    return ChunkFormerSpec(
        model_dir=str(Path(asr.chunkformer_model).expanduser()),
        device=_resolve_device(asr.chunkformer_device, torch),
        chunk_size=asr.chunkformer_chunk_size,
        left_context=asr.chunkformer_left_context,
        right_context=asr.chunkformer_right_context,
        batch_size=asr.chunkformer_batch_size,
        max_silence_s=asr.chunkformer_max_silence_s,
    )


def load(spec: ChunkFormerSpec) -> ChunkFormerCtc:
    return load_model(spec.model_dir, spec.device)


def parallel_blocks(model: LoadedModel) -> int:
    """One block at a time: a pass already batches up to ``batch_size`` chunks over torch's threads."""
    return 1


def known_language(model: LoadedModel, requested: str | None) -> str | None:
    """ChunkFormer does not detect languages: the request's, as given."""
    return requested


def transcribe(
    samples: np.ndarray, regions: Sequence[tuple[float, float]], request: AsrRequest, model: LoadedModel
) -> Transcript:
    """Transcribe the speech ``regions`` of ``samples`` with a loaded ChunkFormer checkpoint."""
    spec: ChunkFormerSpec = model.spec
    ctc: ChunkFormerCtc = model.model
    torch = _import_torch()
    decoding = Decoding(
        chunk_size=spec.chunk_size,
        left_context=spec.left_context,
        right_context=spec.right_context,
        batch_size=spec.batch_size or _default_batch_size(ctc, spec.chunk_size),
    )
    duration = len(samples) / SAMPLE_RATE
    regions = [(max(0.0, s), min(duration, e)) for s, e in regions if min(duration, e) > max(0.0, s)]

    started = time.perf_counter()
    request.progress(0.0)
    try:
        with torch.inference_mode():
            segments, confidences = _decode_regions(
                ctc, samples, regions, decoding, spec.max_silence_s, request.progress
            )
    except MaieError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise MaieError(ErrorCode.ASR_FAILED, f"ChunkFormer decoding failed: {exc}") from exc
    request.progress(1.0)

    return Transcript(
        segments=segments,
        language=request.language,
        language_probability=None,
        confidence=float(np.mean(confidences)) if confidences else None,
        versions={
            "backend": "chunkformer",
            "model": spec.model_dir,
            "device": spec.device,
            "compute_type": "float32",
            "decoding": {
                "chunk_size": decoding.chunk_size,
                "left_context": decoding.left_context,
                "right_context": decoding.right_context,
                "batch_size": decoding.batch_size,
                "max_silence_s": spec.max_silence_s,
            },
        },
        processing_time_s=time.perf_counter() - started,
    )


def _default_batch_size(model: ChunkFormerCtc, chunk_size: int) -> int:
    """Chunks per pass within the package's default budget of input frames."""
    return max(1, int(PACKAGE_BATCH_FRAMES // (chunk_size * model.encoder.embed.subsampling_rate)))


# --- loading -------------------------------------------------------------------------------------


def load_model(model_dir: str | Path, device: str = "cpu") -> ChunkFormerCtc:
    """Load a CTC ChunkFormer checkpoint directory onto ``device``."""
    torch = _import_torch()
    modules = chunkformer_modules()
    root = Path(model_dir)
    if not root.is_dir():
        raise MaieError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"ChunkFormer model directory {root} does not exist: set MAIE_ASR__CHUNKFORMER_MODEL to a "
            "downloaded checkpoint directory such as khanhld/chunkformer-large-vie.",
        )
    config_path = root / "config.yaml"
    vocab_path = root / "vocab.txt"
    checkpoint = next((root / name for name in CHECKPOINT_NAMES if (root / name).is_file()), None)
    missing = [p.name for p in (config_path, vocab_path) if not p.is_file()]
    if checkpoint is None:
        missing.append(" or ".join(CHECKPOINT_NAMES))
    if missing:
        raise MaieError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"ChunkFormer model directory {root} lacks {', '.join(missing)}: set MAIE_ASR__CHUNKFORMER_MODEL "
            "to a downloaded checkpoint directory such as khanhld/chunkformer-large-vie.",
        )
    assert checkpoint is not None
    try:
        import yaml

        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        vocab = {i: token for token, i in modules.read_symbol_table(str(vocab_path)).items()}
        if config.get("model", "asr_model") != "asr_model" or config.get("encoder", "chunkformer") != "chunkformer":
            raise ValueError(
                f"only CTC checkpoints (model: asr_model, encoder: chunkformer) are supported, got "
                f"model: {config.get('model')}"
            )
        if not config["encoder_conf"].get("dynamic_conv", False):
            raise ValueError("encoder_conf.dynamic_conv is off, so the encoder cannot decode in chunks")
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
        encoder_state = _substate(state, "encoder.")
        cmvn = _global_cmvn(root / "global_cmvn", encoder_state, modules, torch)
        encoder = modules.ChunkFormerEncoder(config["input_dim"], global_cmvn=cmvn, **config["encoder_conf"])
        blank_id = _blank_id(config, vocab)
        ctc = modules.CTC(config["output_dim"], encoder.output_size(), blank_id=blank_id)
        # strict: a config that does not match the weights must fail here, not decode noise (the
        # package loads non-strictly). Only CMVN statistics may come from global_cmvn alone.
        missing_keys, unexpected = encoder.load_state_dict(encoder_state, strict=False)
        missing_keys = [k for k in missing_keys if not k.startswith("global_cmvn.")]
        if missing_keys or unexpected:
            raise ValueError(
                f"config.yaml does not match the encoder weights: missing {missing_keys[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        ctc.load_state_dict(_substate(state, "ctc."), strict=True)
        # the package reads a top-level fbank_conf; training recipes keep it under dataset_conf
        fbank_conf = config.get("fbank_conf") or (config.get("dataset_conf") or {}).get("fbank_conf") or {}
        fbank = FbankConfig(
            num_mel_bins=int(fbank_conf.get("num_mel_bins", config["input_dim"])),
            frame_length_ms=float(fbank_conf.get("frame_length", 25)),
            frame_shift_ms=float(fbank_conf.get("frame_shift", 10)),
        )
    except MaieError:
        raise
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, AssertionError, AttributeError) as exc:
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, f"Could not load the ChunkFormer model in {root}: {exc}") from exc
    torch_device = torch.device(device)
    return ChunkFormerCtc(
        encoder=encoder.to(torch_device).eval(),
        ctc=ctc.to(torch_device).eval(),
        vocab=vocab,
        blank_id=blank_id,
        fbank=fbank,
        device=torch_device,
        model_dir=str(root),
    )


def _substate(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _global_cmvn(path: Path, encoder_state: dict[str, Any], modules: Any, torch: Any) -> Any:
    """The encoder's CMVN layer: from ``global_cmvn`` (JSON or Kaldi text), else from the checkpoint."""
    if path.is_file():
        is_json = path.read_text(encoding="utf-8").lstrip().startswith("{")
        mean, istd = modules.load_cmvn(str(path), is_json)
        return modules.GlobalCMVN(torch.from_numpy(mean).float(), torch.from_numpy(istd).float())
    if "global_cmvn.mean" in encoder_state:
        # the statistics are buffers of the encoder, so a checkpoint carries them too
        mean, istd = encoder_state["global_cmvn.mean"], encoder_state["global_cmvn.istd"]
        return modules.GlobalCMVN(mean.clone().float(), istd.clone().float())
    return None


def _blank_id(config: Mapping[str, Any], vocab: Mapping[int, str]) -> int:
    configured = (config.get("ctc_conf") or {}).get("ctc_blank_id")
    if configured is not None:
        return int(configured)
    return next((i for i, token in vocab.items() if token == "<blank>"), 0)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, f"The ChunkFormer backend needs PyTorch: {INSTALL_HINT}") from exc
    return torch


def _resolve_device(setting: str, torch: Any) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise MaieError(ErrorCode.MODEL_UNAVAILABLE, "MAIE_ASR__CHUNKFORMER_DEVICE is cuda but PyTorch sees no GPU.")
    return setting


def import_chunkformer_module(name: str) -> Any:
    """Import a ``chunkformer.*`` submodule without running the package ``__init__`` (see the module
    docstring). The stand-in parent is removed afterwards, so a later plain ``import chunkformer`` is real."""
    if "chunkformer" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("chunkformer")
    if spec is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError("No module named 'chunkformer'", name="chunkformer")
    sys.modules["chunkformer"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(name)
    finally:
        sys.modules.pop("chunkformer", None)


@dataclass(frozen=True)
class _Modules:
    ChunkFormerEncoder: Any
    CTC: Any
    GlobalCMVN: Any
    load_cmvn: Callable[..., Any]
    read_symbol_table: Callable[[str], dict[str, int]]


@lru_cache(maxsize=1)
def chunkformer_modules() -> _Modules:
    """The ``chunkformer`` package's model classes and file readers."""
    try:
        encoder = import_chunkformer_module("chunkformer.modules.encoder")
        ctc = import_chunkformer_module("chunkformer.modules.ctc")
        cmvn = import_chunkformer_module("chunkformer.modules.cmvn")
        cmvn_file = import_chunkformer_module("chunkformer.utils.cmvn")
        files = import_chunkformer_module("chunkformer.utils.file_utils")
    except ImportError as exc:
        raise MaieError(
            ErrorCode.MODEL_UNAVAILABLE,
            f"The ChunkFormer backend needs the chunkformer package ({exc}): {INSTALL_HINT}",
        ) from exc
    return _Modules(
        ChunkFormerEncoder=encoder.ChunkFormerEncoder,
        CTC=ctc.CTC,
        GlobalCMVN=cmvn.GlobalCMVN,
        load_cmvn=cmvn_file.load_cmvn,
        read_symbol_table=files.read_symbol_table,
    )


# --- features ------------------------------------------------------------------------------------


def kaldi_fbank(samples: np.ndarray, config: FbankConfig = FbankConfig()) -> torch.Tensor:
    """Log mel filterbank of 16 kHz float samples, (frames, num_mel_bins).

    Matches ``torchaudio.compliance.kaldi.fbank`` with the options the package passes (int16-scaled
    input, dither 0, povey window, pre-emphasis 0.97, DC removal, power spectrum, 20 Hz..Nyquist,
    snip_edges), without needing torchaudio.
    """
    import torch

    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)) * 32768.0
    win = int(SAMPLE_RATE * config.frame_length_ms / 1000)
    shift = int(SAMPLE_RATE * config.frame_shift_ms / 1000)
    if wave.numel() < win:
        return torch.zeros((0, config.num_mel_bins))
    n_fft = 1 << (win - 1).bit_length()
    banks = _mel_banks(config.num_mel_bins, n_fft)
    window = torch.hann_window(win, periodic=False).pow(0.85)
    n_frames = 1 + (wave.numel() - win) // shift
    blocks = []
    for first in range(0, n_frames, FBANK_BLOCK_FRAMES):
        count = min(FBANK_BLOCK_FRAMES, n_frames - first)
        frames = wave[first * shift : (first + count - 1) * shift + win].unfold(0, win, shift)
        frames = frames - frames.mean(dim=1, keepdim=True)
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = (frames - 0.97 * previous) * window
        power = torch.fft.rfft(frames, n=n_fft).abs().pow(2.0)
        blocks.append((power @ banks.T).clamp_min(torch.finfo(torch.float32).eps).log())
    return torch.cat(blocks)


@lru_cache(maxsize=8)
def _mel_banks(num_bins: int, n_fft: int, low_hz: float = 20.0) -> torch.Tensor:
    """Kaldi's triangular mel filters, (num_bins, n_fft // 2 + 1) with a zero Nyquist column."""
    import torch

    def mel(hz: Any) -> Any:
        return 1127.0 * (1.0 + hz / 700.0).log() if isinstance(hz, torch.Tensor) else 1127.0 * math.log(1 + hz / 700)

    mel_low, mel_high = mel(low_hz), mel(SAMPLE_RATE / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left, center, right = (mel_low + (index + k) * delta for k in (0.0, 1.0, 2.0))
    fft_mel = mel(SAMPLE_RATE / n_fft * torch.arange(n_fft // 2)).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp_min(torch.minimum(up, down), 0.0)
    return torch.nn.functional.pad(banks, (0, 1)).float()


# --- decoding ------------------------------------------------------------------------------------


@dataclass
class _Frames:
    """Greedy CTC output of one region: best token and its posterior per encoder frame."""

    ids: list[int]
    probs: list[float]


def _decode_regions(
    model: ChunkFormerCtc,
    samples: np.ndarray,
    regions: Sequence[tuple[float, float]],
    decoding: Decoding,
    max_silence_s: float,
    report: Callable[[float], None],
) -> tuple[list[Segment], list[float]]:
    """Decode each region; short regions share forward passes, long ones run in cached passes."""
    total = sum(end - start for start, end in regions) or 1.0
    done = 0.0
    results: dict[int, _Frames] = {}
    pending: list[int] = []
    pending_chunks = 0
    features: dict[int, torch.Tensor] = {}

    def progress(seconds: float) -> None:
        nonlocal done
        done += seconds
        report(min(done / total, 1.0))

    def flush() -> None:
        nonlocal pending, pending_chunks
        if pending:
            frames = encode_batch(model, [features.pop(i) for i in pending], decoding)
            results.update(zip(pending, frames, strict=True))
            progress(sum(regions[i][1] - regions[i][0] for i in pending))
        pending, pending_chunks = [], 0

    for index, (start, end) in enumerate(regions):
        feats = kaldi_fbank(samples[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)], model.fbank)
        if feats.shape[0] == 0:
            results[index] = _Frames([], [])
            continue
        chunks = _chunk_count(feats.shape[0], decoding.chunk_size, model.encoder.embed)
        if chunks > decoding.batch_size:
            flush()
            results[index] = encode_long(model, feats, decoding, progress_s=progress)
            continue
        if pending_chunks + chunks > decoding.batch_size:
            flush()
        features[index] = feats
        pending.append(index)
        pending_chunks += chunks
    flush()

    max_silence = max(1, round(max_silence_s / model.frame_s))
    segments: list[Segment] = []
    confidences: list[float] = []
    for index, (start, end) in enumerate(regions):
        frames = results[index]
        found, probs = ctc_segments(
            frames.ids, frames.probs, model.vocab, model.blank_id, model.frame_s, start, end, max_silence
        )
        segments.extend(found)
        confidences.extend(probs)
    return segments, confidences


def _chunk_count(n_frames: int, chunk_size: int, embed: Any) -> int:
    """Chunks ``forward_parallel_chunk`` cuts ``n_frames`` input frames into."""
    size = (chunk_size - 1) * embed.subsampling_rate + embed.right_context + 1
    step = chunk_size * embed.subsampling_rate
    extra: int = math.ceil((n_frames - size) / step)
    return 1 + max(0, extra)


def encode_batch(model: ChunkFormerCtc, feats: Sequence[torch.Tensor], decoding: Decoding) -> list[_Frames]:
    """One masked-batch pass over several regions (the package's ``batch_decode``)."""
    import torch

    device = model.device
    lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.int, device=device)
    out, out_lengths, n_chunks, _, _, _ = model.encoder.forward_parallel_chunk(
        xs=[f.to(device) for f in feats],
        xs_origin_lens=lengths,
        chunk_size=decoding.chunk_size,
        left_context_size=decoding.left_context,
        right_context_size=decoding.right_context,
        offset=torch.zeros(len(feats), dtype=torch.int, device=device),
    )
    probs, ids = model.ctc.log_softmax(out).max(dim=-1)  # (chunks, chunk_size)
    frames = []
    for p, i, n in zip(probs.split(n_chunks), ids.split(n_chunks), out_lengths.tolist(), strict=True):
        n = max(0, n)
        frames.append(_Frames(i.flatten()[:n].tolist(), p.flatten()[:n].exp().tolist()))
    return frames


def encode_long(
    model: ChunkFormerCtc,
    feats: torch.Tensor,
    decoding: Decoding,
    progress_s: Callable[[float], None] = lambda seconds: None,
) -> _Frames:
    """One long region in passes of ``batch_size`` chunks that carry attention and convolution caches
    (the package's ``endless_decode``), so memory stays bounded on hours of audio."""
    import torch

    encoder, device = model.encoder, model.device
    subsampling = encoder.embed.subsampling_rate
    conv_lorder = encoder.cnn_module_kernel // 2
    chunk, left, right = decoding.chunk_size, decoding.left_context, decoding.right_context
    truncated = chunk * decoding.batch_size  # encoder frames kept per pass
    # Input frames past a pass's last kept frame that still reach it: per layer the convolution, the
    # rest of that frame's chunk and the right context. (The package's endless_decode looks ahead
    # r + max(c, r)(n - 1), which misses the chunk rounding and the convolution, so its posteriors
    # drift near pass edges; with this bound, passes give exactly the single-pass output.)
    lookahead = encoder.num_blocks * (chunk + right + conv_lorder) * subsampling
    att_cache = torch.zeros(
        (encoder.num_blocks, left, encoder.attention_heads, encoder.output_size() * 2 // encoder.attention_heads),
        device=device,
    )
    cnn_cache = torch.zeros((encoder.num_blocks, encoder.output_size(), conv_lorder), device=device)
    offset = torch.zeros(1, dtype=torch.int, device=device)
    n_frames = feats.shape[0]
    step = truncated * subsampling
    ids: list[int] = []
    probs: list[float] = []
    for start in range(0, n_frames, step):
        end = min(start + step + 7, n_frames)  # + the subsampling's extra frames, as the package does
        x = feats[start : end + lookahead].to(device)
        out, out_length, _, att_cache, cnn_cache, offset = encoder.forward_parallel_chunk(
            xs=[x],
            xs_origin_lens=torch.tensor([x.shape[0]], dtype=torch.int, device=device),
            chunk_size=chunk,
            left_context_size=left,
            right_context_size=right,
            att_cache=att_cache,
            cnn_cache=cnn_cache,
            truncated_context_size=truncated,
            offset=offset,
        )
        length = int(out_length[0])
        out = out.reshape(1, -1, out.shape[-1])[:, :length]
        last = start + lookahead >= n_frames
        if not last:
            out = out[:, :truncated]  # the rest is recomputed with full right context next pass
        offset = offset - length + out.shape[1]
        best, best_ids = model.ctc.log_softmax(out).max(dim=-1)
        ids.extend(best_ids[0].tolist())
        probs.extend(best[0].exp().tolist())
        covered = n_frames - start if last else min(step, n_frames - start)
        progress_s(covered * model.fbank.frame_shift_ms / 1000)
        if last:
            break
    return _Frames(ids, probs)


def ctc_segments(
    ids: Sequence[int],
    probs: Sequence[float],
    vocab: Mapping[int, str],
    blank_id: int,
    frame_s: float,
    region_start: float,
    region_end: float,
    max_silence_frames: int,
) -> tuple[list[Segment], list[float]]:
    """Greedy CTC frames of one region to timed segments, split where blanks last ``max_silence_frames``.

    Returns the segments and the posterior of every emitted token (a token's peak over its frames).
    """
    # tokens: (first frame, last frame, id, peak posterior); repeats of a token collapse
    tokens: list[list[Any]] = []
    previous = blank_id
    for t, (token, prob) in enumerate(zip(ids, probs, strict=True)):
        if token != blank_id:
            if token == previous:
                tokens[-1][1] = t
                tokens[-1][3] = max(tokens[-1][3], prob)
            else:
                tokens.append([t, t, token, prob])
        previous = token
    groups: list[list[list[Any]]] = []
    for tok in tokens:
        if groups and tok[0] - groups[-1][-1][1] - 1 < max_silence_frames:
            groups[-1].append(tok)
        else:
            groups.append([tok])

    segments: list[Segment] = []
    posteriors: list[float] = []
    floor = region_start
    for group in groups:
        pieces = [vocab.get(tok[2], "") for tok in group]
        kept = [(piece, tok[3]) for piece, tok in zip(pieces, group, strict=True) if not _SPECIAL_TOKEN.match(piece)]
        text = " ".join("".join(piece for piece, _ in kept).replace("▁", " ").split())
        if not text:
            continue
        start = max(floor, region_start + (group[0][0] - ONSET_FRAMES) * frame_s)
        end = min(region_end, region_start + (group[-1][1] + 1) * frame_s)
        start = min(start, end)
        token_probs = [p for _, p in kept]
        segments.append(
            Segment(start=round(start, 3), end=round(end, 3), text=text, confidence=float(np.mean(token_probs)))
        )
        posteriors.extend(token_probs)
        floor = end
    return segments, posteriors
