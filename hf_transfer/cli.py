"""Command lines of ``train.py`` and the ``python -m hf_transfer.*`` commands: ``--config FILE`` plus any
config key as ``--section.key VALUE``, and one way to report errors."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import Callable, Optional, Sequence

from .config import load_config, to_yaml
from .errors import ConfigError, HfTransferError, TrainingInterrupted

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
USAGE_EXAMPLE = "python train.py --config configs/quickstart.yaml --train.epochs 3 --data.path ./my_images"


def config_parser(description: str) -> argparse.ArgumentParser:
    """A command's parser with ``--config``; every other ``--section.key VALUE`` is a config override."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=f"Any config key can be set on the command line, e.g.: {USAGE_EXAMPLE}. "
        "A boolean key given alone (--output.resume) means true.",
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    return parser


def overrides_from_args(tokens: Sequence[str]) -> list[str]:
    """``['--train.epochs', '3', '--data.path=x', '--output.resume']`` -> ``['train.epochs=3', 'data.path=x',
    'output.resume=true']``."""
    overrides: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"Unexpected argument {token!r}. Set config keys as --section.key VALUE, e.g. {USAGE_EXAMPLE}.")
        key = token[2:]
        if "=" in key:
            overrides.append(key)
        elif index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
            overrides.append(f"{key}={tokens[index + 1]}")
            index += 1
        else:
            overrides.append(f"{key}=true")
        index += 1
    return overrides


def run_command(command: Callable[[], Optional[int]], level: int = logging.INFO) -> int:
    """Run a command's body with logging on stderr (``level`` on the main process, warnings on the others)
    and return its exit code: the body's (None is 0), 2 with one line and no traceback for a user error or
    a full disk, 128+signal when interrupted."""
    main_process = os.environ.get("RANK", "0") == "0"
    level = level if main_process else max(level, logging.WARNING)
    if not logging.getLogger().handlers:  # leave logging alone where the caller has set it up
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("accelerate").setLevel(max(level, logging.WARNING))  # one line per file saved is noise
        logging.getLogger("httpx2").setLevel(max(level, logging.WARNING))  # one line per HTTP request is noise
    try:
        return command() or 0
    except TrainingInterrupted as e:
        print(f"hf_transfer: {e}", file=sys.stderr)
        return e.exit_code
    except HfTransferError as e:
        print(f"hf_transfer: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        print(
            f"hf_transfer: error: the disk is full ({e.strerror}) writing {e.filename or 'the outputs'}. "
            "Completed checkpoints are kept: free space, then run again with --output.resume.",
            file=sys.stderr,
        )
        return 2


def run_config_command(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]],
    command: Callable[[argparse.Namespace, list[str]], Optional[int]],
) -> int:
    """``run_command`` for a command that takes a config: parse ``argv`` (the parser's options; every other
    ``--section.key VALUE`` is a config override) and run ``command(args, overrides)``."""

    def body() -> Optional[int]:
        args, rest = parser.parse_known_args(argv)
        return command(args, overrides_from_args(rest))

    return run_command(body)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``train.py``; returns the process exit code."""
    parser = config_parser("Fine-tune a timm backbone on an image classification dataset.")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    def command(args: argparse.Namespace, overrides: list[str]) -> Optional[int]:
        config = load_config(args.config, overrides)
        if args.print_config:
            print(to_yaml(config), end="")
            return 0
        from .launch import relaunch_on_cpu_processes
        from .training import train  # slow imports, after the config is known good

        code = relaunch_on_cpu_processes()
        if code is None:
            train(config)
        return code

    return run_config_command(parser, argv, command)
