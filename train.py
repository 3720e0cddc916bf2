"""Train an image classifier: ``accelerate launch train.py --config configs/quickstart.yaml``."""

from hf_transfer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
