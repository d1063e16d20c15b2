"""ChunkFormer backend: the real load-and-decode path on a tiny randomly initialised checkpoint.

No ChunkFormer checkpoint can be downloaded here, so ``tiny_checkpoint`` writes one in the published
on-disk format (``config.yaml``, ``pytorch_model.bin`` with encoder, attention decoder and CTC weights,
``vocab.txt``, JSON ``global_cmvn``) with the package's own model classes and tiny dimensions. Its text
is meaningless; the tests check structure, timing and the decoding paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maie.config import AsrSettings, Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.asr import chunkformer
from maie.pipeline.asr.backend import AsrRequest, LoadedModel
from maie.pipeline.context import SAMPLE_RATE, DecodedAudio, SpeechRegions, TaskContext, Transcript
from maie.pipeline.registry import ModelRegistry
from maie.schemas import TaskOptions, TaskStatus

AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
VOCAB = [
    "<blank>", "<unk>",
    "▁xin", "▁chào", "▁các", "▁bạn", "▁việt", "▁nam", "▁không", "▁có", "▁gì", "▁quý", "▁hơn",
    "▁độc", "▁lập", "▁tự", "▁do", "▁hạnh", "▁phúc", "a", "n", "h", "ng", "ư", "ơ", "ê",
    "<sos/eos>",
]  # fmt: skip
REFERENCE_ROW_100 = [11.3638, 8.422, 13.8332, 12.7286]
REFERENCE_MEAN = 16.2951
"""torchaudio 2.11 ``compliance.kaldi.fbank`` of jfk.flac as the package calls it (int16 scale, 80 bins,
dither 0, energy_floor 0): frame 100's first bins and the mean over all frames and bins."""
ENCODER_CONF = {
    "output_size": 32,
    "attention_heads": 2,
    "linear_units": 64,
    "num_blocks": 2,
    "dropout_rate": 0.1,
    "positional_dropout_rate": 0.1,
    "attention_dropout_rate": 0.1,
    "input_layer": "dw_striding",
    "pos_enc_layer_type": "chunk_rel_pos",
    "selfattention_layer_type": "chunk_rel_seflattn",
    "normalize_before": True,
    "macaron_style": True,
    "use_cnn_module": True,
    "cnn_module_kernel": 15,
    "cnn_module_norm": "layer_norm",
    "dynamic_conv": True,
    "activation_type": "swish",
    "causal": False,
}


def decode_flac(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [
            frame.to_ndarray().reshape(-1)
            for packet in container.decode(audio=0)
            for frame in resampler.resample(packet)
        ]
        chunks += [frame.to_ndarray().reshape(-1) for frame in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def tiny_checkpoint(root: Path, samples: np.ndarray, seed: int = 0) -> Path:
    """Write a randomly initialised ChunkFormer CTC checkpoint directory and return it."""
    import torch
    import yaml

    encoder_mod = chunkformer.import_chunkformer_module("chunkformer.modules.encoder")
    decoder_mod = chunkformer.import_chunkformer_module("chunkformer.modules.decoder")
    ctc_mod = chunkformer.import_chunkformer_module("chunkformer.modules.ctc")
    cmvn_mod = chunkformer.import_chunkformer_module("chunkformer.modules.cmvn")

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "input_dim": 80,
        "output_dim": len(VOCAB),
        "model": "asr_model",
        "encoder": "chunkformer",
        "encoder_conf": ENCODER_CONF,
        "decoder": "transformer",
        "decoder_conf": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1},
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False},
        "cmvn": "global_cmvn",
        "cmvn_conf": {"cmvn_file": "global_cmvn", "is_json_cmvn": True},
        "dataset_conf": {"fbank_conf": {"num_mel_bins": 80, "frame_shift": 10, "frame_length": 25}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    (root / "vocab.txt").write_text("".join(f"{t} {i}\n" for i, t in enumerate(VOCAB)), encoding="utf-8")
    # CMVN statistics in the JSON form training writes, computed from real speech
    feats = chunkformer.kaldi_fbank(samples).double()
    stats = {
        "mean_stat": feats.sum(0).tolist(),
        "var_stat": (feats**2).sum(0).tolist(),
        "frame_num": feats.shape[0],
    }
    (root / "global_cmvn").write_text(json.dumps(stats), encoding="utf-8")

    torch.manual_seed(seed)
    mean = feats.mean(0).float()
    istd = (1.0 / feats.std(0).clamp_min(1e-3)).float()
    model = torch.nn.Module()  # same state-dict layout as the package's ASRModel
    model.encoder = encoder_mod.ChunkFormerEncoder(80, global_cmvn=cmvn_mod.GlobalCMVN(mean, istd), **ENCODER_CONF)
    width = ENCODER_CONF["output_size"]
    model.decoder = decoder_mod.TransformerDecoder(len(VOCAB), width, **config["decoder_conf"])
    model.ctc = ctc_mod.CTC(len(VOCAB), width)
    with torch.no_grad():  # favour blank so the random output has pauses between tokens
        model.ctc.ctc_lo.weight.mul_(6.0)
        model.ctc.ctc_lo.bias[0] += 3.0
    torch.save(model.state_dict(), root / "pytorch_model.bin")
    return root


def make_ctx(model_dir: Path | None, models: ModelRegistry | None = None, **asr: object) -> TaskContext:
    settings = Settings(asr=AsrSettings(chunkformer_model=str(model_dir) if model_dir else None, **asr))
    return TaskContext(
        task_id="t",
        options=TaskOptions(asr_backend="chunkformer"),
        settings=settings,
        models=models or ModelRegistry(),
    )


def with_audio(ctx: TaskContext, samples: np.ndarray, regions: list[tuple[float, float]]) -> TaskContext:
    duration = len(samples) / SAMPLE_RATE
    ctx.audio = DecodedAudio(samples=samples, duration_s=duration, source_format="flac", source_channels=1)
    ctx.speech = SpeechRegions(regions=regions, coverage=sum(e - s for s, e in regions) / duration)
    return ctx


def transcribe(ctx: TaskContext) -> Transcript:
    """The backend called as the ASR stage calls it (``maie.pipeline.asr.backend``): spec from the
    settings, the warm model from the registry, the context's speech regions."""
    spec = chunkformer.resolve_spec(ctx.settings)
    loaded: list[bool] = []

    def load() -> object:
        loaded.append(True)
        return chunkformer.load(spec)

    model = LoadedModel(spec, ctx.models.get(spec.key, load))
    assert ctx.audio is not None and ctx.speech is not None
    request = AsrRequest(language=ctx.options.language, progress=lambda f: ctx.report(TaskStatus.PROCESSING_ASR, f))
    transcript = chunkformer.transcribe(ctx.audio.samples, ctx.speech.regions, request, model)
    transcript.load_time_s = ctx.models.load_time(spec.key) if loaded else 0.0
    return transcript


def test_missing_model_setting_names_the_setting_and_the_extra() -> None:
    ctx = make_ctx(None)
    with pytest.raises(MaieError) as info:
        transcribe(ctx)
    assert info.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "MAIE_ASR__CHUNKFORMER_MODEL" in info.value.message
    assert "maie[chunkformer]" in info.value.message


# --- everything below needs torch (the test command installs the chunkformer extra) --------------


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return decode_flac(AUDIO / "jfk.flac")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, jfk: np.ndarray) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("chunkformer-tiny"), jfk)


def test_fbank_matches_torchaudio_kaldi_reference(jfk: np.ndarray) -> None:
    feats = chunkformer.kaldi_fbank(jfk)
    # 1 + (176000 - 400) // 160 frames of 80 bins, as Kaldi's snip_edges framing gives
    assert feats.shape == (1098, 80)
    # values from torchaudio 2.11 compliance.kaldi.fbank on the same samples (int16 scale, dither 0)
    assert feats[100, :4].tolist() == pytest.approx(REFERENCE_ROW_100, abs=1e-3)
    assert feats.mean().item() == pytest.approx(REFERENCE_MEAN, abs=1e-3)


def test_missing_files_are_model_unavailable(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("input_dim: 80\n")
    with pytest.raises(MaieError) as info:
        chunkformer.load_model(tmp_path)
    assert info.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "vocab.txt" in info.value.message and "pytorch_model.bin" in info.value.message


def test_config_that_does_not_match_the_weights_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    import shutil

    import yaml

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    config = yaml.safe_load((broken / "config.yaml").read_text(encoding="utf-8"))
    config["encoder_conf"]["num_blocks"] = 3
    (broken / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with pytest.raises(MaieError) as info:
        chunkformer.load_model(broken)
    assert info.value.code == ErrorCode.MODEL_UNAVAILABLE
    assert "encoders.2" in info.value.message


@pytest.mark.slow
def test_transcribe_tiny_checkpoint_on_real_audio(checkpoint: Path, jfk: np.ndarray) -> None:
    registry = ModelRegistry()
    duration = len(jfk) / SAMPLE_RATE
    # with 16-frame chunks and 3 chunks a pass: the first region is decoded in a batch of its own,
    # the second fills one, the third (640 frames) runs in two cached passes
    regions = [(0.3, 1.2), (1.5, 4.2), (4.6, duration)]
    decoding = {"chunkformer_chunk_size": 16, "chunkformer_left_context": 32, "chunkformer_right_context": 16}
    reports: list[tuple[TaskStatus, float]] = []
    ctx = with_audio(make_ctx(checkpoint, registry, chunkformer_batch_size=3, **decoding), jfk, regions)
    ctx.report = lambda stage, fraction: reports.append((stage, fraction))

    first = transcribe(ctx)

    assert len(first.segments) >= 2, "the random model should still emit tokens on 11 s of speech"
    previous_end = 0.0
    for segment in first.segments:
        assert previous_end <= segment.start < segment.end <= duration
        assert any(s <= segment.start and segment.end <= e for s, e in regions), "segment outside speech"
        assert segment.words is None
        assert segment.confidence is not None and 0.0 < segment.confidence <= 1.0
        previous_end = segment.end
    pieces = {token.replace("▁", "") for token in VOCAB if not token.startswith("<")}
    for word in first.text.split():
        assert _made_of(word, pieces), f"{word!r} is not made of vocabulary tokens"
    assert first.confidence is not None and 0.0 < first.confidence <= 1.0
    assert first.versions == {
        "backend": "chunkformer",
        "model": str(checkpoint),
        "device": "cpu",
        "compute_type": "float32",
        "decoding": {
            "chunk_size": 16,
            "left_context": 32,
            "right_context": 16,
            "batch_size": 3,
            "max_silence_s": 0.5,
        },
    }
    assert first.load_time_s > 0
    assert {stage for stage, _ in reports} == {TaskStatus.PROCESSING_ASR}
    fractions = [f for _, f in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(set(fractions)) >= 4, "progress should move with each pass"

    # a second job: warm model, and with everything in one pass the transcript is the same
    ctx = with_audio(make_ctx(checkpoint, registry, **decoding), jfk, regions)
    second = transcribe(ctx)
    assert registry.loads() == 1, "the second job reloaded the model"
    assert second.load_time_s == 0.0
    assert second.versions["decoding"]["batch_size"] > 3
    assert [s.model_dump() for s in second.segments] == [s.model_dump() for s in first.segments]


@pytest.mark.slow
def test_only_speech_regions_are_decoded(checkpoint: Path, jfk: np.ndarray) -> None:
    registry = ModelRegistry()
    ctx = with_audio(make_ctx(checkpoint, registry), jfk, [(2.0, 5.0)])
    transcript = transcribe(ctx)
    assert transcript.segments
    assert all(s.start >= 2.0 and s.end <= 5.0 for s in transcript.segments)
    empty = transcribe(with_audio(make_ctx(checkpoint, registry), jfk, []))
    assert empty.segments == [] and empty.confidence is None


@pytest.mark.slow
def test_cached_long_form_passes_match_one_pass(checkpoint: Path, jfk: np.ndarray) -> None:
    """A region longer than one pass is decoded in passes carrying attention/convolution caches
    (the package's endless decoding); the CTC output must equal decoding it in a single pass, so the
    batch size is only a memory knob."""
    import torch

    model = chunkformer.load_model(checkpoint)
    feats = chunkformer.kaldi_fbank(jfk)
    for settings in (
        {"chunk_size": 8, "left_context": 16, "right_context": 8},
        {"chunk_size": 8, "left_context": 8, "right_context": 16},
    ):
        with torch.inference_mode():
            whole = chunkformer.encode_batch(model, [feats], chunkformer.Decoding(batch_size=10_000, **settings))
            for batch_size in (1, 3):
                passes = chunkformer.encode_long(model, feats, chunkformer.Decoding(batch_size=batch_size, **settings))
                assert len(passes.ids) == len(whole[0].ids) > 100
                assert passes.ids == whole[0].ids
                np.testing.assert_allclose(passes.probs, whole[0].probs, atol=1e-5)


@pytest.mark.slow
def test_packed_regions_match_regions_decoded_alone(checkpoint: Path, jfk: np.ndarray) -> None:
    """Short regions share a masked batch; masking must keep them independent."""
    import torch

    model = chunkformer.load_model(checkpoint)
    decoding = chunkformer.Decoding(chunk_size=16, left_context=32, right_context=16, batch_size=100)
    parts = [chunkformer.kaldi_fbank(jfk[a * SAMPLE_RATE : b * SAMPLE_RATE]) for a, b in ((0, 3), (3, 4), (5, 11))]
    with torch.inference_mode():
        packed = chunkformer.encode_batch(model, parts, decoding)
        alone = [chunkformer.encode_batch(model, [p], decoding)[0] for p in parts]
    for got, expected in zip(packed, alone, strict=True):
        assert got.ids == expected.ids
        np.testing.assert_allclose(got.probs, expected.probs, atol=1e-4)


def test_ctc_segments_split_on_silence_and_time_tokens() -> None:
    vocab = dict(enumerate(VOCAB))
    blank, xin, chao, unk, cac, ban = 0, 2, 3, 1, 4, 5
    # 80 ms frames: "xin chào" at frames 3-6, seven blank frames (0.56 s), "<unk> các bạn" at 14-18
    ids = [blank] * 3 + [xin, xin, blank, chao] + [blank] * 7 + [unk, cac, blank, ban, ban] + [blank] * 2
    probs = [0.9] * len(ids)
    probs[3], probs[4] = 0.5, 0.7
    segments, posteriors = chunkformer.ctc_segments(ids, probs, vocab, 0, 0.08, 10.0, 11.8, 6)
    assert [s.text for s in segments] == ["xin chào", "các bạn"]
    first, second = segments
    assert first.start == pytest.approx(10.0 + 1 * 0.08) and first.end == pytest.approx(10.0 + 7 * 0.08)
    assert second.start == pytest.approx(10.0 + 12 * 0.08) and second.end == pytest.approx(10.0 + 19 * 0.08)
    assert first.confidence == pytest.approx((0.7 + 0.9) / 2)  # a repeated token keeps its peak
    assert posteriors == pytest.approx([0.7, 0.9, 0.9, 0.9])  # <unk> is dropped
    # a longer allowed silence keeps everything in one segment, clipped to the region
    (merged,), _ = chunkformer.ctc_segments(ids, probs, vocab, 0, 0.08, 10.0, 11.5, 8)
    assert merged.text == "xin chào các bạn" and merged.end == 11.5


def _made_of(word: str, pieces: set[str]) -> bool:
    """Whether ``word`` splits into vocabulary pieces."""
    if not word:
        return True
    return any(word.startswith(p) and _made_of(word[len(p) :], pieces) for p in pieces if p)
