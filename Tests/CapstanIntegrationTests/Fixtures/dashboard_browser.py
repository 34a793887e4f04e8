"""Drives the dashboard in a real headless Chromium (Debian's chromium + chromium-driver, through
Selenium) for DashboardTests: usage `dashboard_browser.py URL JOB_ID SCREENSHOT.png`, the token
in $CAPSTAN_DASHBOARD_TOKEN (never an argument). Exits 0 when every check passed; otherwise
prints what it waited for and what the page showed, and exits 1. Waits are generous deadlines
polled often (a loaded 2-core machine), never fixed sleeps."""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

url, job, shot = sys.argv[1], sys.argv[2], sys.argv[3]
token = os.environ["CAPSTAN_DASHBOARD_TOKEN"]
DEADLINE = float(os.environ.get("CAPSTAN_DASHBOARD_DEADLINE", "180"))

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1250"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
done = []


def js(script, *args):
    return driver.execute_script(script, *args)


def wait(what, condition, deadline=DEADLINE):
    """Polls `condition` (JavaScript returning a truthy value) until it holds."""
    try:
        value = WebDriverWait(driver, deadline, poll_frequency=0.2).until(lambda d: js(condition))
    except TimeoutException:
        raise AssertionError(f"waited {deadline:.0f} s for {what}")
    done.append(what)
    return value


def number(css, attribute):
    return int(js(f"const e = document.querySelector({json.dumps(css)}); return e ? +e.dataset.{attribute} : 0;") or 0)


status = 0
try:
    driver.get(url + "/")
    wait("the token form", "return !document.getElementById('login').hidden")
    # A wrong token: a clear message, and nothing of the dashboard.
    driver.find_element(By.ID, "token").send_keys("cap_" + "x" * 43)
    driver.find_element(By.ID, "login-button").click()
    message = wait("the wrong token's message", "const e = document.getElementById('login-error'); return !e.hidden && e.textContent")
    assert "unknown token" in message and "capstan serve token create" in message, message
    assert not js("return document.querySelector('#jobs')"), "the job list showed for a wrong token"
    # The right token: the running 2-node job in the list.
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-button").click()
    row = f'#jobs tr[data-job="{job}"]'
    wait("the running job in the list", f"const r = document.querySelector({json.dumps(row)}); return r && r.dataset.status === 'running' && r.children[3].textContent.trim() === '2'")
    assert token not in driver.current_url, "the token is in the URL"
    assert js("return sessionStorage.getItem('capstan.token')") == token
    # Its page, by clicking its link; from here on nothing reloads (the marker would be gone).
    js(f"document.querySelector({json.dumps(row + ' a')}).click()")
    wait("the job page", "return location.hash.startsWith('#/jobs/') && document.getElementById('chart') !== null")
    js("window.__noReload = 'still here'")
    first = wait("the loss chart's first points", "const c = document.getElementById('chart'); return c.dataset.metric === 'loss' && +c.dataset.points > 0 && c.querySelector('path.series') && +c.dataset.points")
    wait("the loss chart gaining points", f"return +document.getElementById('chart').dataset.points > {first}")
    lines = wait("log lines from both nodes", "const t = document.getElementById('logs').textContent; return t.includes('[0]') && t.includes('[1]') && +document.getElementById('logs').dataset.lines")
    last = js("const l = document.querySelectorAll('#logs .ln'); return l[l.length - 1].textContent")
    wait("a new log line", f"const l = document.querySelectorAll('#logs .ln'); return +document.getElementById('logs').dataset.lines > {lines} && l[l.length - 1].textContent !== {json.dumps(last)}")
    wait("a checkpoint in the table", "return document.querySelectorAll('#checkpoints tbody tr').length > 0")
    wait("the event timeline", "return document.querySelectorAll('#events li:not(.empty)').length > 0")
    # The agents sample CPU and memory on every node (no GPUs here): a card per node.
    wait("CPU and memory of both nodes", "const t = document.getElementById('telemetry'); return t.dataset.state === 'nodes' && t.querySelectorAll('.node[data-node]').length === 2 && /CPU/.test(t.textContent) && /Memory/.test(t.textContent)")
    wait("progress as step / total", "return /step \\d+ \\/ \\d+/.test(document.getElementById('job-facts').textContent)")
    wait("the job's cost in the facts", "return /cost \\$[0-9]/.test(document.getElementById('job-facts').textContent)")
    wait("tokens/s in the facts", "return /tokens\\/s [0-9.]+k?/.test(document.getElementById('job-facts').textContent)")
    # Another metric can be chosen.
    js("const s = document.getElementById('metric'); s.value = 'tokens_per_s'; s.dispatchEvent(new Event('change'))")
    wait("the tokens/s chart", "return document.getElementById('chart').dataset.metric === 'tokens_per_s' && +document.getElementById('chart').dataset.points > 0")
    js("const s = document.getElementById('metric'); s.value = 'loss'; s.dispatchEvent(new Event('change'))")
    wait("the loss chart again", "return document.getElementById('chart').dataset.metric === 'loss'")
    assert js("return window.__noReload") == "still here", "the page reloaded"
    # The screenshot a person would see: a few more points first.
    now = number("#chart", "points")
    wait("a fuller chart for the screenshot", f"return +document.getElementById('chart').dataset.points >= {now + 20}")
    js("window.scrollTo(0, 0)")
    driver.save_screenshot(shot)
    # Script errors only: the browser also logs every 4xx answer (the wrong token's 401, a
    # server without the telemetry route's 404) as a "network" error.
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e.get("source") != "network"]
    assert not errors, f"console errors: {errors}"
    print(json.dumps({"ok": True, "checks": done, "chartPoints": number("#chart", "points"), "logLines": number("#logs", "lines")}))
except Exception as e:  # noqa: BLE001 — report anything, with what the page showed
    status = 1
    print(f"FAILED after {done}: {type(e).__name__}: {e}", file=sys.stderr)
    try:
        print("page:", js("return document.body.innerText.slice(0, 3000)"), file=sys.stderr)
        for entry in driver.get_log("browser"):
            print("console:", entry, file=sys.stderr)
        driver.save_screenshot(shot + ".failed.png")
    except Exception:  # noqa: BLE001
        pass
finally:
    driver.quit()
sys.exit(status)
