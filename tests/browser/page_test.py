"""The web page of `llamagen serve` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): the model's class names fill the picker, Generate shows a progress count and the images as they finish,
and every image shown is byte for byte the CLI's image with the same seed and settings.

Usage: page_test.py URL CLI_DIR SCREENSHOT — CLI_DIR holds `llamagen generate --class 7 --num-images 6 --seed 4`
(the demo model's defaults). Prints one "N passed, M failed" line; exits non-zero on any failure.
"""
import base64
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, cli_dir, shot = sys.argv[1], sys.argv[2], sys.argv[3]
results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}", flush=True)


opts = Options()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,800"):
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url + "/")
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#class option")) == 10)
    names = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#class option")]
    check("class picker lists the model's class names", names[7] == "7: Sneaker", repr(names))
    check("model line describes the model", "demo: c2i" in driver.find_element(By.ID, "model").text,
          driver.find_element(By.ID, "model").text)
    check("cfg field holds the model's default", driver.find_element(By.ID, "cfg").get_attribute("value") == "2")

    Select(driver.find_element(By.ID, "class")).select_by_value("7")
    for field, value in (("n", "6"), ("seed", "4")):
        el = driver.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)
    t0 = time.time()
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("6 / 6 images in"))
    check("progress reaches 6 / 6", True)
    check("the button is enabled again", driver.find_element(By.ID, "go").is_enabled())
    check("no error shown", driver.find_element(By.ID, "error").text == "", driver.find_element(By.ID, "error").text)
    imgs = driver.find_elements(By.CSS_SELECTOR, "#images img")
    check("six images shown", len(imgs) == 6, str(len(imgs)))
    same = 0
    for k, img in enumerate(imgs):
        src = img.get_attribute("src")
        png = base64.b64decode(src.split(",", 1)[1])
        with open(f"{cli_dir}/{k:06d}.png", "rb") as f:
            same += png == f.read()
        # The browser decoded it: a real 32x32 picture, not a broken image.
        w = driver.execute_script("return arguments[0].naturalWidth", img)
        check(f"image {k} decodes in the browser", w == 32, str(w))
    check("every image equals the CLI's", same == len(imgs), f"{same} of {len(imgs)} equal")
    captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#images figcaption")]
    check("captions name index and class", captions[:2] == ["#0 Sneaker", "#1 Sneaker"], repr(captions))
    driver.save_screenshot(shot)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    check("no JavaScript errors", not errors, repr(errors))
    print(f"(generation in the browser took {time.time() - t0:.2f} s)")
finally:
    driver.quit()

failed = results.count(False)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
