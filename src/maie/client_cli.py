"""``maie submit``: send files to a running MAIE server, show live progress, save or print the transcripts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from maie.client import TRANSCRIPT_FORMATS, MaieApiError, MaieClient

DEFAULT_SERVER = "http://127.0.0.1:8000"


def resolve_api_key(given: str | None) -> str | None:
    """--api-key, else $MAIE_API_KEY, else the key ``maie serve`` generated into the data dir."""
    if given:
        return given
    if os.environ.get("MAIE_API_KEY"):
        return os.environ["MAIE_API_KEY"]
    data_dir = Path(os.environ.get("MAIE_DATA_DIR") or "data")
    key_file = data_dir / "api_key"
    if key_file.is_file():
        return key_file.read_text().strip() or None
    return None


class _ProgressBar:
    """A tqdm bar (0-100 %) on stderr whose description follows the task stage."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self._label = label
        self._bar = tqdm(total=100, desc=label, leave=True, dynamic_ncols=True,
                         bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")  # fmt: skip
        self._done = 0

    def __call__(self, event: dict[str, Any]) -> None:
        stage = str(event.get("stage") or event.get("status") or "").lower()
        self._bar.set_description_str(f"{self._label} {stage:<15}", refresh=False)
        target = round(100 * float(event.get("progress") or 0.0))
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target
        else:
            self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def submit(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.", exists=True, dir_okay=False)],
    server: Annotated[str, typer.Option(help="MAIE server URL.", envvar="MAIE_URL")] = DEFAULT_SERVER,
    api_key: Annotated[
        str | None, typer.Option(help="API key (default: $MAIE_API_KEY, else ./data/api_key).", show_default=False)
    ] = None,
    features: Annotated[str, typer.Option(help="Comma list: raw_transcript, clean_transcript, summary.")] = (
        "raw_transcript"
    ),
    template_id: Annotated[str | None, typer.Option(help="Summary template.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="txt, srt, vtt, json or md.")] = "txt",
    output_dir: Annotated[Path | None, typer.Option("-o", "--output-dir", help="Write <name>.<format> here.")] = None,
    language: Annotated[str | None, typer.Option(help="Language code; default: auto.")] = None,
    diarize: Annotated[bool, typer.Option(help="Speaker diarization.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each task.")] = 3600.0,
) -> None:
    """Upload files to a running MAIE server, follow progress, then save or print the transcripts."""
    if fmt not in TRANSCRIPT_FORMATS:
        typer.echo(f"maie: --format must be one of {', '.join(TRANSCRIPT_FORMATS)}", err=True)
        raise typer.Exit(2)
    key = resolve_api_key(api_key)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"features": features, "template_id": template_id, "language": language}
    if diarize:
        options["enable_diarization"] = True
    failures = 0
    with MaieClient(server, api_key=key) as client:
        try:
            # Queue every file first so the server can work while earlier results are fetched.
            queued = [(path, client.submit(path, **options)) for path in files]
        except MaieApiError as exc:
            typer.echo(f"maie: {exc.detail} ({exc.code})", err=True)
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            typer.echo(f"maie: cannot reach {server}: {exc}", err=True)
            raise typer.Exit(1) from None
        for path, task_id in queued:
            failures += _finish(client, path, task_id, fmt, output_dir, timeout)
    raise typer.Exit(1 if failures else 0)


def _finish(client: MaieClient, path: Path, task_id: str, fmt: str, output_dir: Path | None, timeout: float) -> int:
    """Wait for one task and write its transcript; returns 1 on failure."""
    bar = _ProgressBar(path.name)
    try:
        record = client.wait(task_id, on_progress=bar, timeout=timeout)
    except (MaieApiError, TimeoutError, httpx.HTTPError) as exc:
        bar.close()
        typer.echo(f"maie: {path.name}: {exc}", err=True)
        return 1
    bar.close()
    if record["status"] != "COMPLETE":
        error = record.get("error") or {}
        typer.echo(f"maie: {path.name}: {record['status']}: {error.get('message', '')} ({error.get('code', '')})",
                   err=True)  # fmt: skip
        return 1
    if record.get("error"):  # e.g. SUMMARY_FAILED: the transcript is still there
        typer.echo(f"maie: {path.name}: warning: {record['error'].get('message')} ({record['error'].get('code')})",
                   err=True)  # fmt: skip
    text = client.transcript(task_id, fmt)
    if output_dir is None:
        typer.echo(text.rstrip("\n"))
    else:
        out = output_dir / f"{path.stem}.{fmt}"
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{path.name} -> {out}", err=True)
    return 0
