"""Gradio demo of an image classifier trained with hf_transfer.

Locally: ``python space/app.py --model outputs/quickstart`` (an export folder) or ``--model USER/NAME`` (a Hub
model repo), or ``MODEL_ID=USER/NAME python space/app.py``. On Hugging Face Spaces it runs as it is:
``python -m hf_transfer.push --space`` puts hf_transfer's code beside it and names the model in README.md.
"""

from pathlib import Path

from hf_transfer.demo import main

if __name__ == "__main__":
    raise SystemExit(main(space_dir=Path(__file__).resolve().parent))
