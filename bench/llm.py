"""LLM stage benchmark: schema validity per template, and stage time against bare llama.cpp.

For each built-in template, the summary stage runs ``--runs`` times on a transcript of real audio
(Whisper tiny.en's text of ../shared/audio/jfk.flac and two_speakers_sample.wav, alternating) with
the embedded model and the configured sampling (``MAIE_LLM__SUM_TEMPERATURE``, default 0.2, so runs
differ). Reported per template: schema-valid rate (goal 100%), attempts, mean stage time and tokens.

The baseline is one bare ``llama_cpp.Llama.create_chat_completion`` with the same messages, no
grammar and end-of-generation suppressed, asked for the same number of tokens the stage produced:
the ratio is the cost of the stage (templating, grammar, validation, retries) over raw generation.

    PYTHONPATH=src python bench/llm.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maie.config import Settings
from maie.errors import MaieError
from maie.pipeline.context import TaskContext, Transcript
from maie.pipeline.llm import bundled_gguf_path, get_llm, summarize
from maie.pipeline.llm.summarize import SYSTEM_PROMPT
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


def make_ctx(settings: Settings, models: ModelRegistry, template_id: str, name: str) -> TaskContext:
    segments = [Segment(start=a, end=b, text=t, speaker=s) for a, b, t, s in TRANSCRIPTS[name]]
    return TaskContext(
        task_id="bench",
        options=TaskOptions(features=[Feature.SUMMARY], template_id=template_id),
        settings=settings,
        models=models,
        transcript=Transcript(segments, "en", 1.0, None, {}),
    )


def bare_generation(llama: Any, messages: list[dict[str, str]], n_tokens: int) -> tuple[float, int]:
    """Seconds for llama.cpp alone to produce ``n_tokens`` from the same prompt (no grammar)."""
    stop_ids = {llama.token_eos()}
    for text in ("<|im_end|>", "<|endoftext|>"):
        stop_ids.update(llama.tokenize(text.encode(), add_bos=False, special=True))
    llama.reset()  # no prompt cache from the stage's own call
    started = time.perf_counter()
    out = llama.create_chat_completion(
        messages=messages,
        max_tokens=n_tokens,
        temperature=0.0,
        logit_bias={t: -1000.0 for t in stop_ids},
    )
    return time.perf_counter() - started, out["usage"]["completion_tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="summaries per template (default 20)")
    parser.add_argument("--templates", default="", help="comma-separated ids (default: all built-ins)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: its own)")
    parser.add_argument("--samples", type=Path, default=None, help="write one output per template here")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="maie-bench-"))
    settings = Settings(data_dir=data_dir, llm={"n_ctx": 4096, "n_threads": args.threads})
    models = ModelRegistry()
    store = TemplateStore(data_dir)
    ids = [i for i in args.templates.split(",") if i] or [t.id for t in store.list()]
    print(
        f"model {bundled_gguf_path().name}, {args.runs} runs per template, settings: "
        f"temperature {settings.llm.sum_temperature}, max_tokens {settings.llm.sum_max_tokens}, "
        f"attempts {settings.llm.sum_max_attempts}"
    )
    columns = ("valid", "att.avg", "stage s", "prompt", "compl.", "bare s", "ratio")
    print(f"{'template':28} " + " ".join(f"{c:>7}" for c in columns))
    samples: dict[str, Any] = {}
    totals = {"runs": 0, "valid": 0}
    for template_id in ids:
        template = store.get(template_id)
        validator = schema_validator(template.schema)
        valid, attempts, times, prompt_toks, compl_toks, bare_ratio, bare_times = 0, [], [], [], [], [], []
        for run in range(args.runs):
            name = "jfk" if run % 2 == 0 else "two_speakers"
            ctx = make_ctx(settings, models, template_id, name)
            llama = get_llm(ctx, "summary")._llama  # loaded once, before any timing
            if run < 2:
                llama.reset()  # compare cold prompts on both sides
            started = time.perf_counter()
            try:
                summary = summarize(ctx)
            except MaieError as exc:
                times.append(time.perf_counter() - started)
                print(f"  {template_id} run {run}: {exc.code.value}: {exc.message[:200]}", file=sys.stderr)
                continue
            elapsed = time.perf_counter() - started
            ok = not list(validator.iter_errors(summary.data))
            valid += ok
            attempts.append(summary.attempts)
            times.append(elapsed)
            prompt_toks.append(summary.usage.prompt_tokens)
            compl_toks.append(summary.usage.completion_tokens)
            samples.setdefault(template_id, {"transcript": name, "summary": summary.data})
            if run < 2:  # the baseline on both transcripts
                messages = [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": template.render(ctx_text(ctx), "en")},
                ]
                bare_s, _ = bare_generation(llama, messages, summary.usage.completion_tokens)
                bare_times.append(bare_s)
                bare_ratio.append(elapsed / bare_s)
        totals["runs"] += args.runs
        totals["valid"] += valid
        print(
            f"{template_id:28} {valid:>3}/{args.runs:<3} {statistics.fmean(attempts or [0]):>7.2f} "
            f"{statistics.fmean(times):>8.2f} {statistics.fmean(prompt_toks or [0]):>7.0f} "
            f"{statistics.fmean(compl_toks or [0]):>7.0f} {statistics.fmean(bare_times or [0]):>7.2f} "
            f"{statistics.fmean(bare_ratio or [0]):>6.2f}",
            flush=True,
        )
    rate = 100 * totals["valid"] / max(1, totals["runs"])
    print(f"schema-valid: {totals['valid']}/{totals['runs']} ({rate:.1f}%)")
    if args.samples:
        args.samples.write_text(json.dumps(samples, ensure_ascii=False, indent=2) + "\n")
        print(f"samples written to {args.samples}")
    return 0


def ctx_text(ctx: TaskContext) -> str:
    from maie.pipeline.llm.summarize import summary_source

    return summary_source(ctx)


if __name__ == "__main__":
    raise SystemExit(main())
