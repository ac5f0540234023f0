"""Notebook 06 as a user runs it: a real JupyterLab server on localhost, a real headless Chromium.

On a finished smoke run the test opens notebook 06, runs all its cells from JupyterLab's Run menu,
moves a lambda slider and switches a concept off, and checks what the page shows: the regenerated
image changes each time, every figure is an image (not `<Figure size ...>` text), no widget shows
an error, also after saving and reloading the page. A screenshot is saved under the test's temporary
directory. Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and the `dev`
extra's `selenium` and `jupyterlab`; it is skipped, saying what to install, when they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from viscoin_core import config

pytestmark = pytest.mark.slow

NOTEBOOK = "06_qualitative_figures.ipynb"
APT_HINT = "apt-get install chromium chromium-driver"
# The same defaults as notebook 06's parameters cell, so the notebook finds its run finished.
RUN_DIR, PARAMS = "runs/smoke/viscoin/notebook04", "params/smoke/viscoin.yaml"
TRAIN_AND_EVALUATE = (
    "from viscoin_core.train.viscoin import train_viscoin\n"
    "from viscoin_core.eval import evaluate\n"
    f"train_viscoin({PARAMS!r}, {RUN_DIR!r})\n"
    f"evaluate({RUN_DIR!r}, n_images=32, consistency_concepts=4)\n")
# One torch thread in the training and in the notebook's kernel: on 2 shared cores, torch's default
# threads spin against each other and the browser (a 15 s smoke training took 85 s so).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
RUN_TIMEOUT = 150          # s for notebook 06's cells; about 30 s on 2 CPU cores


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Paths of Chromium and its WebDriver, or skip naming the packages to install (before any training)."""
    pytest.importorskip("selenium", reason="needs selenium: pip install -e '.[dev]' (or pip install selenium)")
    pytest.importorskip("jupyterlab", reason="needs jupyterlab: pip install -e '.[dev]' (or pip install jupyterlab)")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip(f"needs Chromium and its driver: {APT_HINT}")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab_root(chromium, tmp_path):
    """A checkout-shaped folder (pyproject.toml, viscoin_core, params, notebooks/06) with a finished smoke run.

    config.repo_root() finds it from the notebook's folder, so the run, data cache and figures the
    notebook writes stay in tmp_path rather than in the checkout.
    """
    repo, root = config.repo_root(), tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(repo / "pyproject.toml", root)
    for name in ("viscoin_core", "params"):
        (root / name).symlink_to(repo / name, target_is_directory=True)
    shutil.copy(repo / "notebooks" / NOTEBOOK, root / "notebooks")
    subprocess.run([sys.executable, "-c", TRAIN_AND_EVALUATE], cwd=root, check=True, capture_output=True,
                   env=ONE_THREAD)
    return root


@pytest.fixture
def lab_url(lab_root, tmp_path):
    """URL of notebook 06 in a JupyterLab server on a free localhost port, token-protected, as root too."""
    port, token = _free_port(), "viscoin-browser-test"
    settings = tmp_path / "lab-settings"
    # No "official Jupyter news?" toast over the page (and no request for it).
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"}))
    env = {**ONE_THREAD, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime")}     # nothing left in ~/.local
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab_root}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", server, tmp_path / "jupyterlab.log")
        yield f"http://127.0.0.1:{port}/lab/tree/notebooks/{NOTEBOOK}?token={token}"
    finally:
        server.terminate()             # the server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture
def browser(chromium):
    """Headless Chromium driven through Debian's chromedriver (no browser download)."""
    chromium, driver = chromium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: Chromium refuses to run as root with its sandbox (CI containers run as root).
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    page = webdriver.Chrome(options=options, service=Service(driver))
    yield page
    page.quit()


# ----------------------------------------------------------------------------------------------
# What the page shows, read through the DOM


# The explorer's regenerated image, as pixels: an ipywidgets Image is a fresh blob: URL on every
# update, so comparing src would pass even when the picture stayed the same.
REGENERATED_PIXELS = """
const label = [...document.querySelectorAll('.widget-html b')].find(b => b.textContent === 'regenerated');
const img = label && label.closest('.widget-vbox').querySelector('img');
if (!img || !img.complete || !img.naturalWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
canvas.getContext('2d').drawImage(img, 0, 0);
return canvas.toDataURL();
"""


def _wait(page, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(page, timeout, poll_frequency=0.25).until(lambda p: condition(p), message=what)


def _page_text(page) -> str:
    # textContent, not .text: JupyterLab skips rendering off-screen cells, which .text leaves out.
    return page.execute_script("return document.querySelector('.jp-Notebook').textContent")


def _idle_and_done(page) -> bool:
    """The kernel is idle and no cell is queued or running ([*])."""
    return page.execute_script(
        "const busy = [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'));"
        "const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');"
        "return !busy && ind !== null && ind.dataset.status === 'idle';")


def _run_all_cells(page) -> None:
    """Run > Run All Cells, as a user does."""
    from selenium.webdriver.common.by import By
    menu = next(m for m in page.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if m.text == "Run")
    menu.click()
    item = _wait(page, lambda p: [i for i in p.find_elements(By.CSS_SELECTOR, ".lm-Menu-item") if i.text.startswith(
        "Run All Cells")], 10, "Run All Cells in the Run menu")
    item[0].click()


def _check_outputs(page) -> None:
    """Figures are <img>, and no output is a figure's text repr or a widget error."""
    text = _page_text(page)
    assert "<Figure size" not in text
    assert "Error displaying widget" not in text and "model not found" not in text
    images = page.execute_script("return document.querySelectorAll('.jp-OutputArea-output img').length")
    assert images >= 5, f"{images} figure images in the outputs"


def _assert_not_cut(page, element) -> None:
    """The element's text fits its box: CSS would otherwise cut it ("concept 1...") while .text reads it whole."""
    fits = page.execute_script("const e = arguments[0]; return e.scrollWidth <= e.clientWidth;", element)
    assert fits, f"{element.text!r} does not fit its box"


def test_notebook_06_runs_and_its_explorer_redraws_in_jupyterlab(lab_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    page = browser
    page.get(lab_url)
    try:
        _wait(page, lambda p: _idle_and_done(p), 60, "notebook 06 open with an idle kernel")
        _run_all_cells(page)
        _wait(page, lambda p: p.find_elements(By.CSS_SELECTOR, ".widget-slider") and _idle_and_done(p),
              RUN_TIMEOUT, "all cells run and the explorer shown")
        _check_outputs(page)
        start = _wait(page, lambda p: p.execute_script(REGENERATED_PIXELS), 20, "the regenerated image")

        # Move the first lambda slider by four steps (1.00 -> 2.00) with the keyboard, as its handle allows.
        slider = page.find_elements(By.CSS_SELECTOR, ".widget-slider")[0]
        label = slider.find_element(By.CSS_SELECTOR, ".widget-label").text
        assert label.startswith("concept "), label
        _assert_not_cut(page, slider.find_element(By.CSS_SELECTOR, ".widget-label"))
        handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
        for _ in range(4):
            handle.send_keys(Keys.ARROW_RIGHT)
        _wait(page, lambda p: slider.find_element(By.CSS_SELECTOR, ".widget-readout").text == "2.00", 10,
              "the slider at 2.00")
        amplified = _wait(page, lambda p: (now := p.execute_script(REGENERATED_PIXELS)) not in (None, start) and now,
                          20, "the regenerated image changed by the slider")

        # Switch that concept off: its toggle says so and the image changes again.
        k = label.split()[1]
        toggle = page.find_element(By.XPATH, f"//button[normalize-space()='concept {k}: on']")
        toggle.click()
        _wait(page, lambda p: toggle.text.strip() == f"concept {k}: off", 10, f"concept {k}'s toggle reading off")
        _assert_not_cut(page, toggle)
        _wait(page, lambda p: p.execute_script(REGENERATED_PIXELS) not in (None, amplified), 20,
              "the regenerated image changed by the toggle")
        _check_outputs(page)
        page.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
        page.save_screenshot(str(tmp_path / "notebook06_explorer.png"))

        # Save and reload, as a user coming back to the tab: no output may turn into a widget error.
        page.find_element(By.CSS_SELECTOR, ".jp-Notebook").send_keys(Keys.ESCAPE, Keys.CONTROL, "s")
        _wait(page, lambda p: "jp-mod-dirty" not in p.find_element(
            By.CSS_SELECTOR, ".lm-TabBar-tab.jp-mod-current").get_attribute("class"), 20, "the notebook saved")
        page.refresh()
        # The explorer's widgets live on in the kernel, so the reloaded page draws them again.
        _wait(page, lambda p: p.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
              and p.find_elements(By.CSS_SELECTOR, ".widget-slider") and _idle_and_done(p), 60, "the reloaded notebook")
        _check_outputs(page)
        page.save_screenshot(str(tmp_path / "notebook06_reloaded.png"))
    finally:
        page.save_screenshot(str(tmp_path / "notebook06_last.png"))
