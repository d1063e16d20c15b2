"""``maie submit``: send files to a running MAIE server, show live progress, save or print the transcripts."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from maie.client import MaieClient

# httpx, maie.client and maie.exports are imported where they are used: every ``maie`` command imports
# this module (it registers ``submit``), and ``maie serve`` starts its workers only after that.

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
    """A tqdm bar (0-100 %) on stderr whose description follows the task stage; one line per file."""

    def __init__(self, label: str, position: int = 0) -> None:
        from tqdm import tqdm

        self._label = label
        self._bar = tqdm(total=100, desc=label, leave=True, dynamic_ncols=True, position=position,
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


OPTION_CODES = frozenset({"INVALID_FIELD", "VALIDATION_ERROR", "TEMPLATE_NOT_FOUND", "FEATURE_UNAVAILABLE",
                          "BACKEND_UNAVAILABLE", "LANGUAGE_UNSUPPORTED"})  # fmt: skip
"""Server answers meaning "these options cannot run here": exit code 2, like a bad command line."""
MAX_PARALLEL = 4
"""Files uploaded and followed at once (the server queues them; more only adds open connections)."""


def _note(message: str) -> None:
    """A message on stderr that does not tear through the progress bars."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _preflight(client: MaieClient, options: dict[str, Any]) -> str | None:
    """What the server says it cannot do, before any file is sent (None: go ahead)."""
    if not options.get("enable_diarization"):
        return None
    features = client.models().get("features") or {}
    diarization = features.get("diarization") or {}
    if diarization.get("available") is False:
        return (
            f"{diarization.get('detail') or 'speaker diarization is not available on the server'} (FEATURE_UNAVAILABLE)"
        )
    return None


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
    parallel: Annotated[int, typer.Option(help="Files sent and followed at once.", min=1, max=32)] = MAX_PARALLEL,
) -> None:
    """Upload files to a running MAIE server, follow progress, then save or print the transcripts."""
    import httpx

    from maie.client import TRANSCRIPT_FORMATS, MaieApiError, MaieClient
    from maie.logs import tqdm_logging

    if fmt not in TRANSCRIPT_FORMATS:
        typer.echo(f"maie: --format must be one of {', '.join(TRANSCRIPT_FORMATS)}", err=True)
        raise typer.Exit(2)
    key = resolve_api_key(api_key)
    options: dict[str, Any] = {"features": features, "template_id": template_id, "language": language}
    if diarize:
        options["enable_diarization"] = True
    with MaieClient(server, api_key=key) as client:
        try:
            refused = _preflight(client, options)
        except MaieApiError as exc:
            typer.echo(f"maie: {exc.detail} ({exc.code})", err=True)
            raise typer.Exit(1) from None
        except httpx.HTTPError as exc:
            typer.echo(f"maie: cannot reach {server}: {exc}", err=True)
            raise typer.Exit(1) from None
    if refused:
        typer.echo(f"maie: {refused}", err=True)
        raise typer.Exit(2)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)

    job = _Job(server, key, options, fmt, output_dir, timeout)
    with tqdm_logging(), ThreadPoolExecutor(max_workers=min(parallel, len(files))) as pool:
        outcomes = list(pool.map(job.run, files, range(len(files))))
    for path, outcome in zip(files, outcomes, strict=True):
        if outcome.output:
            typer.echo(outcome.output.rstrip("\n"))
        if outcome.note:
            typer.echo(f"maie: {path.name}: {outcome.note}", err=True)
    if any(o.refused for o in outcomes):
        raise typer.Exit(2)
    raise typer.Exit(1 if any(o.failed for o in outcomes) else 0)


@dataclass
class _Outcome:
    output: str = ""
    """What goes to stdout for this file (transcript if not written to a file, clean transcript, summary)."""
    note: str = ""
    failed: bool = False
    refused: bool = False
    """The server refused the options (4xx): every file would be refused the same way."""


@dataclass
class _Job:
    server: str
    key: str | None
    options: dict[str, Any]
    fmt: str
    output_dir: Path | None
    timeout: float
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, path: Path, position: int) -> _Outcome:
        """Send one file, follow it to the end and fetch what was asked for (own connection per file)."""
        import httpx

        from maie.client import MaieApiError, MaieClient

        if self.stop.is_set():
            return _Outcome(note="not sent: the server refused the options", failed=True)
        with MaieClient(self.server, api_key=self.key) as client:
            try:
                task_id = client.submit(path, **self.options)
            except MaieApiError as exc:
                if 400 <= exc.status_code < 500 and exc.code not in ("QUEUE_FULL", "RATE_LIMITED"):
                    self.stop.set()  # a bad key or option: every other file would fail the same way
                    refused = exc.code in OPTION_CODES
                    return _Outcome(note=f"{exc.detail} ({exc.code})", failed=True, refused=refused)
                if exc.code in OPTION_CODES:  # e.g. BACKEND_UNAVAILABLE (503)
                    self.stop.set()
                    return _Outcome(note=f"{exc.detail} ({exc.code})", failed=True, refused=True)
                return _Outcome(note=f"{exc.detail} ({exc.code})", failed=True)
            except httpx.HTTPError as exc:
                return _Outcome(note=f"cannot reach {self.server}: {exc}", failed=True)
            return self._finish(client, path, task_id, position)

    def _finish(self, client: MaieClient, path: Path, task_id: str, position: int) -> _Outcome:
        import httpx

        from maie.client import MaieApiError
        from maie.exports import FORMATS_WITH_LLM_OUTPUT, llm_sections

        bar = _ProgressBar(path.name, position)
        try:
            record = client.wait(task_id, on_progress=bar, timeout=self.timeout)
        except (MaieApiError, TimeoutError, httpx.HTTPError) as exc:
            return _Outcome(note=str(exc), failed=True)
        finally:
            bar.close()
        if record["status"] != "COMPLETE":
            error = record.get("error") or {}
            return _Outcome(
                note=f"{record['status']}: {error.get('message', '')} ({error.get('code', '')})", failed=True
            )
        notes = [f"warning: {w.get('message')} ({w.get('code')})" for w in record.get("warnings") or []]
        if record.get("error") and not record.get("warnings"):  # e.g. SUMMARY_FAILED: the transcript is there
            notes.append(f"warning: {record['error'].get('message')} ({record['error'].get('code')})")
        try:
            text = client.transcript(task_id, self.fmt)
        except (MaieApiError, httpx.HTTPError) as exc:
            return _Outcome(note=f"transcript: {exc}", failed=True)
        results = record.get("results") or {}
        codes = [w.get("code", "") for w in record.get("warnings") or []]
        output = ""
        if self.output_dir is None:
            output = text
            if self.fmt not in FORMATS_WITH_LLM_OUTPUT:
                output += llm_sections(results, warnings=codes)
        else:
            out = self.output_dir / f"{path.stem}.{self.fmt}"
            out.write_text(text, encoding="utf-8")
            notes.append(f"-> {out}")
            output = llm_sections(results, title=path.name, warnings=codes).lstrip("\n")
        return _Outcome(output=output, note="\n".join(notes))
