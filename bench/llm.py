"""LLM summary benchmark: schema validity and grounding per template, model and prompt example.

For each built-in template, the summary stage runs ``--runs`` times on a transcript of real audio
(Whisper tiny.en's text of ../shared/audio/jfk.flac and two_speakers_sample.wav, alternating) with
the configured sampling (``MAIE_LLM__SUM_TEMPERATURE``, default 0.2, so runs differ), once per
example mode (``--examples``: the template's own example in the prompt, a placeholder example
derived from the schema, or none) and per model:

* ``embedded``: the bundled GGUF in-process (always);
* ``--server URL``: any OpenAI-compatible server (repeatable);
* ``--llama-server``: ``python -m llama_cpp.server`` started here on 127.0.0.1 with the same GGUF
  (the same weights through the HTTP path: server flavour detection, response_format, retries).

Reported per (model, example, template): schema-valid rate (goal 100%), grounded ratio (supported
leaves / checked leaves, over all runs), unsupported leaves per run, leaves copied from the
template's example (``copied``: all copies; ``cp.uns``: copies the transcript does not support),
loops cut, and ``unflag.``: unsupported leaves the result does not flag (not marked in
``summary_evidence``, missing from ``summary_grounding.unsupported`` or without a
``SUMMARY_UNGROUNDED`` warning; goal 0 everywhere), and mean stage time.

``--baseline`` adds, for the embedded model, one bare ``llama_cpp.Llama.create_chat_completion``
with the same messages (no grammar, end-of-generation suppressed) asked for the same number of
tokens the stage produced: the ratio is the cost of the stage over raw generation.

    PYTHONPATH=src python bench/llm.py --runs 5 --llama-server
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from maie.config import Settings
from maie.errors import ErrorCode, MaieError
from maie.pipeline.context import TaskContext, Transcript
from maie.pipeline.llm import bundled_gguf_path, get_llm, summarize
from maie.pipeline.llm.summarize import SYSTEM_PROMPT, summary_source
from maie.pipeline.registry import ModelRegistry
from maie.schemas import Feature, Segment, TaskOptions
from maie.templates import TemplateStore, schema_validator

TRANSCRIPTS: dict[str, list[tuple[float, float, str, str | None]]] = {
    "jfk": [
        (0.0, 8.0, "And so, my fellow Americans ask not what your country can do for you", None),
        (8.0, 11.0, "ask what you can do for your country.", None),
    ],
    "two_speakers": [
        (0.0, 11.8, "hello hello hello I didn't know you were there I need to design I thought you", "S1"),
        (11.8, 16.08, "know I heard a beat this is Diane in New Jersey and I'm Sheila and Texas", "S2"),
        (16.08, 20.88, "originally from Chicago oh I'm originally from Chicago also I'm in New Jersey", "S1"),
        (20.88, 25.52, "now though well there isn't that much difference at least you know they all", "S2"),
        (25.52, 31.8, "call me a Yankee down here so I don't hear that New Jersey now", "S2"),
    ],
}
EXAMPLE_MODES = ("full", "placeholder", "none")


@dataclass
class Tally:
    runs: int = 0
    valid: int = 0
    failed: int = 0
    leaves: int = 0
    supported: int = 0
    copied: int = 0
    copied_unsupported: int = 0
    loops: int = 0
    unflagged: int = 0
    times: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    bare_ratio: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("runs", "valid", "failed", "leaves", "supported", "copied", "copied_unsupported", "loops"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.unflagged += other.unflagged
        self.times += other.times
        self.prompt_tokens += other.prompt_tokens
        self.bare_ratio += other.bare_ratio

    @property
    def ratio(self) -> float:
        return self.supported / self.leaves if self.leaves else 0.0


def make_ctx(settings: Settings, models: ModelRegistry, template_id: str, name: str) -> TaskContext:
    segments = [Segment(start=a, end=b, text=t, speaker=s) for a, b, t, s in TRANSCRIPTS[name]]
    return TaskContext(
        task_id="bench",
        options=TaskOptions(features=[Feature.SUMMARY], template_id=template_id),
        settings=settings,
        models=models,
        transcript=Transcript(segments, "en", 1.0, None, {}),
    )


def unflagged(ctx: TaskContext, evidence: list[dict[str, Any]], grounding: dict[str, Any]) -> int:
    """Unsupported leaves the result does not flag: each must be ``supported: false`` in the
    evidence, listed in ``summary_grounding.unsupported``, and the task must carry the warning."""
    warned = any(w.code == ErrorCode.SUMMARY_UNGROUNDED.value for w in ctx.warnings)
    listed = set(grounding.get("unsupported", []))
    return sum(1 for e in evidence if not e["supported"] and (e["path"] not in listed or not warned))


def bare_generation(llama: Any, messages: list[dict[str, str]], n_tokens: int) -> float:
    """Seconds for llama.cpp alone to produce ``n_tokens`` from the same prompt (no grammar)."""
    stop_ids = {llama.token_eos()}
    for text in ("<|im_end|>", "<|endoftext|>"):
        stop_ids.update(llama.tokenize(text.encode(), add_bos=False, special=True))
    llama.reset()  # no prompt cache from the stage's own call
    started = time.perf_counter()
    llama.create_chat_completion(
        messages=messages, max_tokens=n_tokens, temperature=0.0, logit_bias={t: -1000.0 for t in stop_ids}
    )
    return time.perf_counter() - started


def run_cell(
    settings: Settings, models: ModelRegistry, template_id: str, runs: int, baseline: bool, samples: dict[str, Any]
) -> Tally:
    store = TemplateStore(settings.data_dir)
    template = store.get(template_id)
    validator = schema_validator(template.schema)
    tally = Tally()
    for run in range(runs):
        name = "jfk" if run % 2 == 0 else "two_speakers"
        ctx = make_ctx(settings, models, template_id, name)
        llm = get_llm(ctx, "summary")  # loaded before any timing
        if baseline and ctx.settings.llm.base_url is None:
            llm._llama.reset()  # type: ignore[attr-defined]  # a cold prompt, as the bare call gets
        tally.runs += 1
        started = time.perf_counter()
        try:
            summary = summarize(ctx)
        except MaieError as exc:
            tally.failed += 1
            tally.times.append(time.perf_counter() - started)
            print(f"  {template_id} run {run}: {exc.code.value}: {exc.message[:200]}", file=sys.stderr)
            continue
        elapsed = time.perf_counter() - started
        tally.times.append(elapsed)
        tally.valid += not list(validator.iter_errors(summary.data))
        grounding = summary.grounding or {}
        tally.leaves += grounding.get("total", 0)
        tally.supported += grounding.get("supported", 0)
        tally.copied += sum(e["copied"] for e in summary.evidence)
        tally.copied_unsupported += sum(e["copied"] and not e["supported"] for e in summary.evidence)
        tally.loops += summary.loops_cut
        tally.unflagged += unflagged(ctx, summary.evidence, grounding)
        tally.prompt_tokens.append(summary.usage.prompt_tokens)
        samples.setdefault(template_id, []).append(
            {"transcript": name, "summary": summary.data, "grounding": grounding, "loops_cut": summary.loops_cut}
        )
        if baseline and run < 2 and ctx.settings.llm.base_url is None:
            llama = llm._llama  # type: ignore[attr-defined]
            prompt = template.render(summary_source(ctx), "en", summary.usage.params["example"])
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
            tally.bare_ratio.append(elapsed / bare_generation(llama, messages, summary.usage.completion_tokens))
    return tally


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(threads: int | None) -> Iterator[str]:
    """``python -m llama_cpp.server`` with the bundled GGUF on a free local port."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_gguf_path()), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "4096", "--verbose", "False"]
    if threads:
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit("llama_cpp.server exited")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("llama_cpp.server did not start within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


COLUMNS = ("valid", "grounded", "uns/run", "copied", "cp.uns", "loops", "unflag.", "time s", "prompt")


def print_row(model: str, example: str, template_id: str, t: Tally) -> None:
    uns = (t.leaves - t.supported) / max(1, t.runs - t.failed)
    print(
        f"{model:10} {example:11} {template_id:26} {t.valid:>3}/{t.runs:<3} {t.ratio:>8.2f} {uns:>7.1f} "
        f"{t.copied:>6} {t.copied_unsupported:>6} {t.loops:>5} {t.unflagged:>7} "
        f"{statistics.fmean(t.times or [0]):>6.1f} {statistics.fmean(t.prompt_tokens or [0]):>6.0f}"
        + (f"  bare x{statistics.fmean(t.bare_ratio):.2f}" if t.bare_ratio else ""),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="summaries per template and setting (default 5)")
    parser.add_argument("--templates", default="", help="comma-separated ids (default: all built-ins)")
    parser.add_argument("--examples", default=",".join(EXAMPLE_MODES), help="example modes to compare")
    parser.add_argument("--server", action="append", default=[], help="an OpenAI-compatible server URL")
    parser.add_argument("--llama-server", action="store_true", help="also start llama_cpp.server with the GGUF")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded model")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: its own)")
    parser.add_argument("--baseline", action="store_true", help="time bare llama.cpp generation too")
    parser.add_argument("--temperature", type=float, default=None, help="summary temperature (default: the setting's)")
    parser.add_argument("--samples", type=Path, default=None, help="write every summary here (JSON)")
    parser.add_argument("--rescore", type=Path, default=None, help="re-ground the summaries of a --samples file")
    args = parser.parse_args()
    if args.rescore:
        return rescore(args.rescore)

    data_dir = Path(tempfile.mkdtemp(prefix="maie-bench-"))
    store = TemplateStore(data_dir)
    ids = [i for i in args.templates.split(",") if i] or [t.id for t in store.list()]
    modes = [m for m in args.examples.split(",") if m]
    models = ModelRegistry()
    samples: dict[str, Any] = {}
    base = Settings(data_dir=data_dir)
    print(
        f"model {bundled_gguf_path().name}, {args.runs} runs per cell, "
        f"temperature {base.llm.sum_temperature if args.temperature is None else args.temperature}, "
        f"max_tokens {base.llm.sum_max_tokens}, attempts {base.llm.sum_max_attempts}, policy flag"
    )
    print(f"{'model':10} {'example':11} {'template':26} " + " ".join(f"{c:>7}" for c in COLUMNS))

    temp = {} if args.temperature is None else {"sum_temperature": args.temperature}

    def bench(label: str, llm: dict[str, Any]) -> None:
        for mode in modes:
            total = Tally()
            for template_id in ids:
                llm_settings = {"n_ctx": 4096, "n_threads": args.threads, "sum_example": mode, **temp, **llm}
                settings = Settings(data_dir=data_dir, llm=llm_settings)
                cell = samples.setdefault(f"{label}/{mode}", {})
                t = run_cell(settings, models, template_id, args.runs, args.baseline, cell)
                print_row(label, mode, template_id, t)
                total.add(t)
                if args.samples:  # after every cell: a long run stopped half way keeps what it has
                    args.samples.write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n")
            print_row(label, mode, "ALL", total)

    if not args.no_embedded:
        bench("embedded", {})
    for i, url in enumerate(args.server):
        bench(f"server{i + 1}", {"base_url": url})
    if args.llama_server:
        with llama_server(args.threads) as url:
            bench("llama-srv", {"base_url": url})
    if args.samples:
        args.samples.write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n")
        print(f"samples written to {args.samples}")
    return 0


def rescore(path: Path) -> int:
    """Ground the stored summaries again with the current grounding code (the same transcripts),
    e.g. after a change to the matcher, without running any model."""
    from maie.pipeline.llm.grounding import Unit, ground
    from maie.templates import placeholder_example

    samples = json.loads(path.read_text())
    store = TemplateStore(Path(tempfile.mkdtemp(prefix="maie-bench-")))
    print(f"re-grounded from {path}")
    print(f"{'model':10} {'example':11} {'template':26} " + " ".join(f"{c:>7}" for c in COLUMNS))
    for cell, by_template in samples.items():
        label, mode = cell.split("/", 1)
        total = Tally()
        for template_id, runs in by_template.items():
            template = store.get(template_id)
            validator = schema_validator(template.schema)
            t = Tally()
            for run in runs if isinstance(runs, list) else [runs]:  # files before 2026-12 held one
                units = [Unit(i, txt, a, b, spk) for i, (a, b, txt, spk) in enumerate(TRANSCRIPTS[run["transcript"]])]
                g = ground(
                    run["summary"],
                    units,
                    schema=template.schema,
                    examples=[template.example, placeholder_example(template.schema)],
                )
                t.runs += 1
                t.valid += not list(validator.iter_errors(run["summary"]))
                t.leaves += g.total
                t.supported += g.supported
                t.copied += len(g.copied)
                t.copied_unsupported += len(set(g.copied) & set(g.unsupported))
                t.loops += run.get("loops_cut", 0)
            print_row(label, mode, template_id, t)
            total.add(t)
        print_row(label, mode, "ALL", total)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
