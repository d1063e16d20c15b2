"""``maie models download``: fetch a Whisper model on a connected machine for an air-gapped site.

The model lands in a plain directory (CTranslate2 ``model.bin`` + tokenizer and config files) that is
copied to the site and named by ``MAIE_ASR__WHISPER_MODEL=/path/to/dir``; MAIE never needs a model hub
at run time.
"""

from __future__ import annotations

from pathlib import Path

REQUIRED_FILES = ("model.bin", "config.json")
"""What a CTranslate2 Whisper directory must hold for faster-whisper to load it."""


class DownloadError(Exception):
    """The model could not be fetched; the message says why and what to do."""


def known_names() -> list[str]:
    from faster_whisper.utils import available_models

    return list(available_models())


def download_whisper(name: str, dest: Path) -> Path:
    """Download ``name`` (a size such as ``large-v3`` or a hub id ``org/repo``) into ``dest``."""
    if "/" not in name and name not in known_names():
        raise DownloadError(f"unknown model {name!r}: use one of {', '.join(known_names())} or a hub id org/name")
    from faster_whisper.utils import download_model
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    dest.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(download_model(name, output_dir=str(dest)))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise DownloadError(
            f"could not download {name!r} from the model hub ({type(exc).__name__}). Run this command on a "
            "machine that can reach the hub, copy the directory to this site, and set "
            "MAIE_ASR__WHISPER_MODEL to its path."
        ) from None
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise DownloadError(f"the download of {name!r} is incomplete: {', '.join(missing)} missing in {path}")
    return path
