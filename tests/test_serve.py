"""`modlisa serve` (Gradio web app) and `modlisa chat` (terminal loop) on a real tiny run.

The subprocess tests run the real command line through ``tests/centred_cli.py`` (mask logits centred, so that the
barely trained model draws partial masks) and compare what comes back with a ``Predictor`` in this process on
the same centred model: exact pixel equality. The browser test drives the served page in headless Chromium
(Debian's chromium + chromium-driver) through Selenium; it skips, with its reason, when they are absent.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_helpers import NO_SEG_ANSWER, SEG_ANSWER, centre_mask_logits, read_png, scripted_answers
from modlisa.cli import main as modlisa_main
from modlisa.config import ConfigError
from modlisa.data.reasonseg import load_annotation, load_image_rgb
from modlisa.overlay import overlay_masks
from modlisa.predictor import Predictor
from modlisa.serve import SegmentService, example_images
from modlisa.synthetic import generate_example
from modlisa.weights import load_checkpoint

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SERVER_START_S = 180


@pytest.fixture(scope="module")
def run(checkpoint_run) -> Path:
    return checkpoint_run["run"]


@pytest.fixture(scope="module")
def centred(run):
    """(model, tokenizer, processors, cfg) of the run, mask logits centred as tests/centred_cli.py does."""
    model, tokenizer, processors, cfg = load_checkpoint(run)
    centre_mask_logits(model)
    return model, tokenizer, processors, cfg


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, str]:
    """A synthetic scene not in the run's data (192 x 144 or so) and its short query."""
    example = generate_example(5, "test", 0, 192)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    example.image.save(path)
    return path, example.texts[0]


def expected(centred, image: np.ndarray, query: str, is_sentence: bool | None, mode: str = "teacher"):
    """The direct ``Predictor`` answer: (prediction, mask 0/255 uint8, overlay)."""
    model, tokenizer, processors, cfg = centred
    predictor = Predictor(model, tokenizer, processors, cfg.max_length)
    predictor.set_image(image)
    prediction = predictor.predict(query, is_sentence=is_sentence, mode=mode)
    mask = np.where(prediction.mask_union(), 255, 0).astype(np.uint8)
    return prediction, mask, overlay_masks(image, list(prediction.masks))


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "GRADIO_ANALYTICS_ENABLED": "False"}


# ---------------------------------------------------------------------- library (no server)
def test_service_encodes_each_image_once_and_answers_as_the_predictor(centred, scene):
    model, tokenizer, processors, cfg = centred
    image = load_image_rgb(scene[0])
    other = np.ascontiguousarray(image[:, ::-1])
    service = SegmentService(model, tokenizer, processors, max_length=cfg.max_length, mode="teacher")
    first = service.ask(image, "the red circle", is_sentence=False)
    second = service.ask(image.copy(), "  Which shape would roll?  ", is_sentence=True)
    assert service.images_encoded == 1  # same pixels: the image encoders ran once
    service.ask(other, "the red circle", is_sentence=False)
    assert service.images_encoded == 2
    for result, query, is_sentence in ((first, "the red circle", False), (second, "Which shape would roll?", True)):
        prediction, mask, _ = expected(centred, image, query, is_sentence)
        assert result.query == query and result.answer == "[SEG]." and result.question == prediction.question
        assert np.array_equal(result.masks, prediction.masks) and 0 < mask.sum() // 255 < mask.size
    for bad, needle in ((None, "no image"), (np.zeros((4, 4), dtype=np.float32), "8-bit")):
        with pytest.raises(ConfigError, match=needle):
            service.ask(bad, "x")
    for query, needle in (("   ", "the query is empty"), ("find [SEG]", r"\[SEG\]")):
        with pytest.raises(ConfigError, match=needle):
            service.ask(image, query)
    with pytest.raises(ConfigError, match="mode must be one of"):
        service.ask(image, "x", mode="free")


def test_service_serialises_concurrent_callers(centred, scene):
    """Threads asking about two images at once each get their own image's mask: set_image and predict of one
    query are not interleaved with another's."""
    from concurrent.futures import ThreadPoolExecutor

    model, tokenizer, processors, cfg = centred
    image = load_image_rgb(scene[0])
    images = [image, np.ascontiguousarray(image[::-1])]
    service = SegmentService(model, tokenizer, processors, max_length=cfg.max_length, mode="teacher")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: service.ask(images[k % 2], "the red circle"), range(8)))
    masks = [expected(centred, im, "the red circle", None)[1] != 0 for im in images]
    assert not np.array_equal(masks[0], masks[1])
    for k, result in enumerate(results):
        assert np.array_equal(result.masks[0], masks[k % 2]), k


def test_app_handler_files_errors_and_no_seg(centred, scene, tmp_path):
    gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'modlisa[demo]')")
    from modlisa.serve.app import build_app, make_handler

    model, tokenizer, processors, cfg = centred
    image = load_image_rgb(scene[0])
    service = SegmentService(model, tokenizer, processors, max_length=cfg.max_length)  # generate mode
    segment = make_handler(service, tmp_path / "out")
    with scripted_answers(model, tokenizer, [SEG_ANSWER]):
        _, mask, picture = expected(centred, image, "the red circle", False, mode="generate")
    with scripted_answers(model, tokenizer, [SEG_ANSWER, NO_SEG_ANSWER]):
        answer, overlay, mask_path, info = segment(image, "the red circle", "phrase", "generate")
        assert answer == "[SEG]." and info.startswith("1 mask:")
        assert np.array_equal(read_png(Path(mask_path)), mask) and np.array_equal(overlay, picture)
        assert Path(mask_path).name == "0001_mask.png"
        assert segment(image, "What is this?", "as typed", "generate") == (
            "No", None, None, "No [SEG] in the answer: no mask. Question: `What is this?`")
    for args, needle in (((None, "x", "as typed", "teacher"), "no image"),
                         ((image, "", "as typed", "teacher"), "the query is empty"),
                         ((image, "x", "poem", "teacher"), "question form must be one of")):
        with pytest.raises(gr.Error, match=needle):
            segment(*args)
    demo = build_app(service, example_images(None, tmp_path / "examples"))
    assert isinstance(demo, gr.Blocks)


def test_example_images_from_the_test_split_or_synthetic(checkpoint_run, tmp_path):
    found = example_images(checkpoint_run["data"], tmp_path / "unused", 2)
    assert found and all(e.path.parent == checkpoint_run["data"] / "test" for e in found)
    ann = load_annotation(found[0].path.with_suffix(".json"))
    assert (found[0].query, found[0].is_sentence) == (ann.texts[0], ann.is_sentence)
    assert not (tmp_path / "unused").exists()
    made = example_images(tmp_path / "no-such-data", tmp_path / "examples", 2)
    assert [e.path.name for e in made] == ["example_0.png", "example_1.png"]
    assert [e.is_sentence for e in made] == [False, True]  # the generator: even index phrase, odd sentence
    assert all(load_image_rgb(e.path).shape[2] == 3 and e.query for e in made)


def test_serve_without_gradio_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "modlisa.serve.app", raising=False)
    assert modlisa_main(["serve", "--checkpoint", str(tmp_path / "never-loaded")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "modlisa serve: error: modlisa serve needs Gradio, an optional extra: pip install 'modlisa[demo]'"


# ---------------------------------------------------------------------- modlisa chat (subprocess)
@pytest.mark.slow
def test_chat_subprocess_with_piped_input(run, centred, scene, tmp_path):
    image_path, query = scene
    out = tmp_path / "out"
    stdin = "\n".join([str(tmp_path / "missing.png"), f'"{image_path}"', query, "Which shape would roll?", "",
                       "quit"]) + "\n"
    result = subprocess.run([sys.executable, str(TESTS / "centred_cli.py"), "chat", "--checkpoint", str(run),
                             "--mode", "teacher", "--is_sentence", "false", "--out", str(out)],
                            input=stdin, capture_output=True, text=True, env=_env(), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    assert f"error: {tmp_path / 'missing.png'}: image file not found" in text
    assert "answer: [SEG]." in text and "2 answer(s) written to" in text
    image = load_image_rgb(image_path)
    stem = image_path.stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"000{n}_{stem}{suffix}" for n in (1, 2) for suffix in ("_mask.png", "_overlay.png", ".json"))
    for n, q in ((1, query), (2, "Which shape would roll?")):
        _, mask, picture = expected(centred, image, q, False)
        assert f"mask: {out / f'000{n}_{stem}_mask.png'}" in text
        assert np.array_equal(read_png(out / f"000{n}_{stem}_mask.png"), mask)
        assert np.array_equal(read_png(out / f"000{n}_{stem}_overlay.png"), picture)


# ---------------------------------------------------------------------- modlisa serve (subprocess)
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """`modlisa serve --mode teacher` on 127.0.0.1 (a free port) in a subprocess; yields its URL."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'modlisa[demo]')")
    log = tmp_path_factory.mktemp("server") / "serve.log"
    port = _free_port()
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, str(TESTS / "centred_cli.py"), "serve", "--checkpoint",
                                    str(run), "--mode", "teacher", "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT, env=_env())
    try:
        deadline = time.monotonic() + SERVER_START_S
        while "at http://" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"modlisa serve did not start (exit {process.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_api_client_gets_answer_and_the_predictors_mask(server, centred, scene):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    image_path, query = scene
    client = Client(server, verbose=False)
    answer, overlay_file, mask_file, info = client.predict(handle_file(str(image_path)), query, "phrase", "teacher",
                                                           api_name="/segment")
    image = load_image_rgb(image_path)
    prediction, mask, picture = expected(centred, image, query, False)
    assert answer == "[SEG]." and info.startswith("1 mask:") and prediction.question.strip() in info
    assert Path(mask_file).suffix == ".png" and Path(overlay_file).suffix == ".png"
    served_mask = read_png(Path(mask_file))
    assert served_mask.shape == image.shape[:2] and 0 < (served_mask == 255).sum() < served_mask.size
    assert np.array_equal(served_mask, mask)  # exact: the served model is the Predictor's
    assert np.array_equal(read_png(Path(overlay_file)), picture)
    with pytest.raises(AppError, match="the query is empty"):
        client.predict(handle_file(str(image_path)), "  ", "phrase", "teacher", api_name="/segment")


def _chrome(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is absent (Debian: apt-get install chromium chromium-driver)"
                    " - the served page is not driven in a browser")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1050", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # no Selenium Manager


# the output image as the browser decoded it: size, src and RGBA pixels read back through a canvas
READ_OVERLAY = """
const img = document.querySelector('#overlay img');
if (!img || !img.complete || img.naturalWidth === 0) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const url = canvas.toDataURL('image/png');
return {width: img.naturalWidth, height: img.naturalHeight, src: img.getAttribute('src'), png: url};
"""


@pytest.mark.slow
def test_browser_upload_query_and_overlay(server, centred, scene, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image_path, query = scene
    image = load_image_rgb(image_path)
    prediction, mask, picture = expected(centred, image, query, None)
    driver = _chrome(tmp_path)
    try:
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        driver.get(server)
        submit = wait.until(lambda d: d.find_element(By.ID, "submit"))
        submit.click()  # no image yet: the error is shown in the page
        error = "no image: upload one or pick an example"
        wait.until(lambda d: error in d.find_element(By.TAG_NAME, "body").text)
        for close in driver.find_elements(By.CSS_SELECTOR, "[data-testid='toast-close']"):
            close.click()
        wait.until(lambda d: error not in d.find_element(By.TAG_NAME, "body").text)

        driver.find_element(By.CSS_SELECTOR, "#examples tr.tr-body").click()  # pick the example image
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#query textarea").get_attribute("value"))
        submit.click()
        first = wait.until(lambda d: d.execute_script(READ_OVERLAY))
        assert first["width"] > 0 and first["src"]
        assert driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value") == "[SEG]."

        driver.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']").click()
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(image_path))
        box = driver.find_element(By.CSS_SELECTOR, "#query textarea")
        box.clear()
        box.send_keys(query)
        driver.find_element(By.CSS_SELECTOR, "#question-form input[value='as typed']").click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image img"))
        submit.click()
        shown = wait.until(lambda d: (lambda r: r if r and r["width"] == image.shape[1] else None)(
            d.execute_script(READ_OVERLAY)))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask-file a"))
        driver.save_screenshot(str(tmp_path / "serve.png"))
        if os.environ.get("MODLISA_SERVE_SCREENSHOT"):  # refresh docs/images/serve.png
            driver.save_screenshot(os.environ["MODLISA_SERVE_SCREENSHOT"])
        link = driver.find_element(By.CSS_SELECTOR, "#mask-file a").get_attribute("href")
    finally:
        driver.quit()
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    rendered = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown["png"].split(",", 1)[1]))).convert("RGB"))
    assert rendered.shape == image.shape
    on = mask == 255
    assert 0 < on.sum() < on.size
    assert (rendered[on] != image[on]).any(axis=1).all()  # every masked pixel is tinted
    assert np.array_equal(rendered, picture)  # what the browser shows is the Predictor's overlay
    with urllib.request.urlopen(link, timeout=30) as response:  # the download link serves the mask PNG
        downloaded = np.asarray(Image.open(io.BytesIO(response.read())))
    assert np.array_equal(downloaded, mask)
