"""Command line of ``train.py`` (``--config FILE`` plus any config key as ``--section.key VALUE``), and the
error handling shared by the other commands (export, push, predict)."""

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


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    """The known options, and the config overrides as ``key=value`` strings."""
    parser = argparse.ArgumentParser(
        description="Fine-tune a timm backbone on an image classification dataset.",
        epilog=f"Any config key can be set on the command line, e.g.: {USAGE_EXAMPLE}. "
        "A boolean key given alone (--output.resume) means true.",
    )
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args, rest = parser.parse_known_args(argv)
    return args, overrides_from_args(rest)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 user error, 128+signal when interrupted)."""
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per file saved is noise
    try:
        args, overrides = parse_args(argv)
        config = load_config(args.config, overrides)
        if args.print_config:
            print(to_yaml(config), end="")
            return 0
        from .launch import relaunch_on_cpu_processes
        from .training import train  # slow imports, after the config is known good

        code = relaunch_on_cpu_processes()
        if code is not None:
            return code
        train(config)
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
    return 0


def run_command(command: Callable[[], None], level: int = logging.INFO) -> int:
    """Run a command-line tool's body: logs at ``level`` on stderr, and a user error is one line on stderr
    and exit code 2 instead of a traceback."""
    if not logging.getLogger().handlers:  # leave logging alone where the caller has set it up
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx2").setLevel(max(level, logging.WARNING))  # one line per HTTP request is noise
    try:
        command()
    except HfTransferError as e:
        print(f"hf_transfer: error: {e}", file=sys.stderr)
        return 2
    return 0
