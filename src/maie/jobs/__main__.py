"""``python -m maie.jobs worker``: the worker ``maie serve`` starts. The same as ``maie worker``, without
importing the CLI (its client commands and HTTP client), so the worker's model load starts ~0.2 s sooner,
and with the models loading in a thread while RQ, Redis and the task store are imported."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv != ["worker"]:
        print("usage: python -m maie.jobs worker", file=sys.stderr)
        return 2
    from maie.privacy import make_private

    make_private()  # as the CLI does before every command
    from maie.config import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"maie: {exc}", file=sys.stderr)
        return 2
    from maie.logs import configure_logging

    configure_logging(settings)
    from maie.jobs.warmup import launch_worker

    launch_worker(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
