"""The demo in a real browser: headless Chromium (the Debian package; CI installs it in ``.ci/run``) driven by
Selenium, against ``python space/app.py --model DIR`` run from this checkout. A screenshot of the page is kept
in ``test-artifacts/space.png``: an image the model classifies rightly, with its label."""

from __future__ import annotations

import json
import shutil
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from hf_transfer import predict
from hf_transfer.loading import load_model
from hf_transfer.examples import write_examples

from conftest import REPO, validation_images
from space_app import AppProcess

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts"
# Headless, and nothing that would reach for the (closed) network: updates, sync, QUIC, first-run pages.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1100")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no browser: the Debian packages chromium and chromium-driver are not installed (.ci/run installs them; "
    "apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def local_app(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """``python space/app.py --model RUN_DIR`` in this checkout, with its hf_transfer, offline."""
    home = tmp_path_factory.mktemp("browser-app")
    env = {"PYTHONPATH": str(REPO), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    with AppProcess(REPO / "space" / "app.py", ["--model", str(trained_run)], env, home / "app.log", cwd=REPO) as app:
        yield app


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    except WebDriverException as e:
        pytest.fail(f"{CHROMIUM} is installed but does not start under {DRIVER}: {e.msg}")
    yield driver
    driver.quit()


def top_label(model: Path, image: Path) -> str:
    """The first label ``python -m hf_transfer.predict`` prints for ``image``."""
    out = StringIO()
    with redirect_stdout(out):
        assert predict.main(["--model", str(model), str(image), "--top-k", "1", "--json"]) == 0
    return json.loads(out.getvalue())[0]["predictions"][0]["label"]


def rightly_classified(model: Path) -> Path:
    """A bundled validation image that the model puts in its true class (its folder's name)."""
    images = validation_images(4)
    predictions = predict.predict_images(load_model(model), images, top_k=1)
    right = [image for image, prediction in zip(images, predictions) if prediction.labels[0] == image.parent.name]
    assert right, f"the test model classifies none of {len(images)} validation images rightly"
    return right[0]


def shown_label(browser: WebDriver, previous: str = "") -> str:
    """The top class the page shows once it differs from ``previous`` (waits up to 60 s)."""

    def label(driver: WebDriver) -> str | bool:
        found = driver.find_elements(By.CSS_SELECTOR, '[data-testid="label-output-value"]')
        text = found[0].text.strip() if found else ""
        return text if text and text != previous else False

    return WebDriverWait(browser, 60).until(label)


def test_uploaded_image_and_clicked_example_show_the_predict_commands_label(
    local_app: AppProcess, browser: WebDriver, trained_run: Path, tmp_path: Path
) -> None:
    image = rightly_classified(trained_run)
    browser.get(local_app.url)
    wait = WebDriverWait(browser, 60)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]"))).send_keys(str(image))
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "img[src*='gradio_api/file']")))  # the preview
    browser.find_element(By.XPATH, "//button[normalize-space()='Classify']").click()
    expected = top_label(trained_run, image)
    assert shown_label(browser) == expected == image.parent.name  # the predict command's label, and the right one
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "test_resnet" in page and "Validation (40 images)" in page and "10 classes" in page
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "space.png"))

    # the examples are the run's validation images: clicking one classifies it
    examples = write_examples(trained_run, tmp_path / "examples")
    second = next(path for path in examples if top_label(trained_run, path) != expected)
    browser.find_element(By.XPATH, f"//button[contains(@class, 'gallery-item')][.//img[contains(@src, '/{second.name}')]]").click()
    assert shown_label(browser, previous=expected) == top_label(trained_run, second)
