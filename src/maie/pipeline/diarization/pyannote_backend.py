"""pyannote.audio, used instead of the built-in diarizer when a pipeline is configured by local path.

Only a local pipeline (``settings.diarization.pyannote_path``: a config.yaml, or a folder holding
one, whose model paths are local too) is loaded: hub access and pyannote's usage telemetry are
switched off before the import, so nothing leaves the machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import SAMPLE_RATE, LabelledSpan

PYANNOTE_KIND = "pyannote"


def _offline() -> None:
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def load_pipeline(path: str, device: str) -> Any:
    """The pyannote pipeline at ``path`` on ``device``."""
    _offline()
    try:
        from pyannote.audio import Pipeline
    except ImportError as exc:
        raise MaieError(
            ErrorCode.DIARIZATION_FAILED,
            f"MAIE_DIARIZATION__PYANNOTE_PATH is set but pyannote.audio is not installed ({exc}); "
            "install it (pip install pyannote.audio) or unset the setting to use the built-in diarizer",
        ) from exc
    try:
        from pyannote.audio.telemetry import set_telemetry_metrics

        set_telemetry_metrics(False)
    except ImportError:  # older releases have no telemetry
        pass
    config = Path(path)
    if config.is_dir():
        config = config / "config.yaml"
    if not config.is_file():
        raise MaieError(ErrorCode.DIARIZATION_FAILED, f"no pyannote pipeline config at {config}")
    pipeline = Pipeline.from_pretrained(str(config))
    if pipeline is None:
        raise MaieError(ErrorCode.DIARIZATION_FAILED, f"pyannote could not load the pipeline at {config}")
    import torch

    pipeline.to(torch.device(device))
    return pipeline


def pyannote_turns(
    pipeline: Any, samples: np.ndarray, *, min_speakers: int | None, max_speakers: int | None
) -> list[LabelledSpan]:
    """(start, end, pyannote label) spans of ``samples`` (16 kHz mono)."""
    import torch

    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).unsqueeze(0)
    bounds = {k: v for k, v in (("min_speakers", min_speakers), ("max_speakers", max_speakers)) if v}
    output = pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, **bounds)
    # pyannote 4 returns an object holding the annotation; 3.x returns the annotation itself.
    annotation = getattr(output, "speaker_diarization", output)
    return [(float(seg.start), float(seg.end), str(label)) for seg, _, label in annotation.itertracks(yield_label=True)]
